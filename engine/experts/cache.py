"""The device expert cache: a pool of slots, LRU eviction, pins, prefetch and acquire.

Owns the device copies of experts. `prefetch(layer, ids)` starts copies of predicted experts;
`acquire(layer, ids)` makes routed experts resident and returns their slots, classifying each as a
resident hit, a prefetch hit (brought by a prefetch, first use) or a miss (demand load, a stall);
`release()` unpins them. An entry is pinned while a step uses it or while its prefetch awaits the
layer's routing, and pinned entries are never evicted.

On CUDA every copy runs on one dedicated copy stream from pinned host memory; the compute stream
waits on per-slot events instead of the host waiting, and a slot is never overwritten before the
compute that last read it is done (an event recorded at release). Stall time is measured with CUDA
events around the compute stream's waits and read back lazily. On CPU everything is synchronous.

A device slot table `slot_dev[layer, expert]` (int32, -1 = not resident) mirrors where each expert
lives, so code that runs without the host (a captured decode step) can find routed experts' slots;
the host updates its pinned mirror on every install/eviction and `sync_slot_table(layer)` sends a
changed row before that layer's experts run.

Streamed decode steps (`engine.runner.graphs`: one captured graph per step at any cache size, missing
experts read from host memory by the kernels) never wait for the host. The host accounts each step
after it ran (`stream_account`), queues the missed and predicted experts (`stream_queue`) and, before the
next step is launched, `stream_publish` makes the copies that landed visible in the device table,
evicts for the queued experts (their entries become -1 in the same table upload), and starts their
copies behind an event recorded after that upload: every step that could still read an evicted slot
was launched before it. An expert's table entry stays -1 until its copy has landed, so a step sees
either a complete slot or the host copy, never a slot being written.

Hot path note: ids arrive as Python ints (the routed ids are read on the host once per layer).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.api.stats import CacheCounters
from engine.experts.store import ExpertStore

Key = tuple[int, int]  # (moe layer index, expert id)

HIT, PREFETCH_HIT, MISS = "hit", "prefetch_hit", "miss"


class CacheFull(RuntimeError):
    """Every slot is pinned: the caller asked for more experts at once than the cache can hold."""


@dataclass
class Acquired:
    layer: int
    ids: list[int]
    slots: list[int]
    kinds: list[str]
    stall_seconds: float | None = None  # CPU: measured now; CUDA: read later from events
    events: list = field(default_factory=list)  # per id: its copy's CUDA event not yet waited on, or None
    stalls: list = field(default_factory=list)  # CUDA (before, after) event pairs around this step's waits


@dataclass
class _LayerPrefetch:
    keys: set[Key] = field(default_factory=set)  # predicted experts pinned for this layer's routing


def slots_for_budget(
    total_experts: int,
    expert_nbytes: int,
    min_slots: int,
    fraction: float | None = None,
    gigabytes: float | None = None,
    free_bytes: int | None = None,
) -> int:
    """How many slots the cache gets: from a fraction, from GB, or from free device memory."""
    if fraction is not None:
        slots = round(fraction * total_experts)
    elif gigabytes is not None:
        slots = int(gigabytes * 1e9 // expert_nbytes)
    elif free_bytes is not None:
        slots = int(free_bytes // expert_nbytes)
    else:
        slots = total_experts
    return max(min_slots, min(total_experts, slots))


class ExpertCache:
    def __init__(
        self,
        store: ExpertStore,
        num_slots: int,
        device: torch.device,
        counters: CacheCounters | None = None,
        on_stall: Callable[[float], None] | None = None,
    ) -> None:
        if num_slots < 1:
            raise ValueError("the expert cache needs at least one slot")
        self.store = store
        self.layout = store.layout
        self.device = device
        self.capacity = num_slots
        self.cuda = device.type == "cuda"
        self.pool = torch.empty(
            (num_slots, self.layout.numel), dtype=self.layout.dtype, device=device
        )  # [S, numel]
        self.weights = self.layout.views(self.pool)  # name -> [S, *shape]
        self.counters = counters or CacheCounters(store.num_layers)
        self.counters.slots_capacity = num_slots
        self.on_stall = on_stall
        self.on_route: Callable[[int, list[int]], None] | None = None  # sees every layer-step's routed set
        self.before_routing: Callable[[], None] | None = (
            None  # the prefetcher's barrier (see engine.prefetch.prefetcher)
        )
        self.decode = None  # engine.model.offload.DecodeMode while the runner runs a decode step
        self._slot_of: dict[Key, int] = {}
        self._key_of: list[Key | None] = [None] * num_slots
        self._lru: OrderedDict[Key, None] = OrderedDict()  # oldest first
        self._pins = [0] * num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self._fresh: set[Key] = set()  # brought by a prefetch, not used yet
        self._prefetch = [_LayerPrefetch() for _ in range(store.num_layers)]
        self._copy_done: list[torch.cuda.Event | None] = [None] * num_slots
        self._last_use: list[torch.cuda.Event | None] = [None] * num_slots
        self._pending_stalls: list[list[tuple[torch.cuda.Event, torch.cuda.Event]]] = []
        self.copy_stream = torch.cuda.Stream(device=device) if self.cuda else None
        n_layers, n_experts = store.num_layers, self.layout.num_experts
        self.slot_host = torch.full((n_layers, n_experts), -1, dtype=torch.int32, pin_memory=self.cuda)
        self.slot_dev = self.slot_host.to(device) if self.cuda else self.slot_host  # [L, E]
        self._dirty: set[int] = set()  # layers whose device slot-table row is stale
        self._landing: dict[Key, int] = {}  # streamed fills whose copy may still be in flight (entry -1)
        self._queued: dict[Key, bool] = {}  # streamed fills to start at the next publish (True: prefetch)
        self._unwaited: set[int] = set()  # slots visible in the table whose copy no compute has waited for

    # ---------------------------------------------------------------- queries
    def resident(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._slot_of

    def resident_keys(self) -> list[Key]:
        return list(self._lru)

    def pinned_slots(self) -> int:
        return sum(1 for p in self._pins if p > 0)

    # ---------------------------------------------------------------- internals
    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        for key in self._lru:  # oldest first
            slot = self._slot_of[key]
            if self._pins[slot] == 0:
                self._evict(key)
                return slot
        return None

    def _evict(self, key: Key) -> None:
        slot = self._slot_of.pop(key)
        del self._lru[key]
        self._landing.pop(key, None)
        self._unwaited.discard(slot)
        self._key_of[slot] = None
        self.slot_host[key[0], key[1]] = -1
        self._dirty.add(key[0])
        if key in self._fresh:  # a prefetched expert evicted before any use
            self._fresh.discard(key)
            self.counters.prefetch_wasted[key[0]] += 1
        self.counters.slots_used -= 1

    def _install(self, key: Key, slot: int, visible: bool = True) -> None:
        if key in self._slot_of:  # a second slot for one expert would orphan the first for good
            raise RuntimeError(f"expert cache: {key} installed twice (slots {self._slot_of[key]} and {slot})")
        self._slot_of[key] = slot
        self._key_of[slot] = key
        self._lru[key] = None
        if visible:
            self._show(key, slot)
        else:  # the table says -1 until the copy has landed (streamed steps)
            self._landing[key] = slot
        self.counters.slots_used += 1

    def _show(self, key: Key, slot: int) -> None:
        """Point the table entry of `key` at `slot` (sent to the device with its layer's row)."""
        self._landing.pop(key, None)
        self.slot_host[key[0], key[1]] = slot
        self._dirty.add(key[0])

    def _hit(self, key: Key) -> str:
        """Count a routed expert found in its slot: a prefetch hit on the first use of a prefetched expert,
        else a resident hit; it becomes the most recently used."""
        c, layer = self.counters, key[0]
        self._lru.move_to_end(key)
        if key in self._fresh:
            self._fresh.discard(key)
            c.hits_prefetched[layer] += 1
            c.prefetch_used[layer] += 1
            return PREFETCH_HIT
        c.hits_resident[layer] += 1
        return HIT

    def _copy_in(self, key: Key, slot: int, after: torch.cuda.Event | None = None) -> None:
        src = self.store.row(*key)  # [numel] pinned host
        dst = self.pool[slot]  # [numel] device
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                if after is not None:
                    self.copy_stream.wait_event(after)
                last = self._last_use[slot]
                if last is not None:
                    self.copy_stream.wait_event(last)  # never overwrite weights still being read
                dst.copy_(src, non_blocking=True)
                ev = torch.cuda.Event(enable_timing=False)
                ev.record(self.copy_stream)
            self._copy_done[slot] = ev
            if key not in self._landing:  # prefetch / acquire: the table shows it before the copy lands
                self._unwaited.add(slot)
        else:
            dst.copy_(src)

    def _pin(self, slot: int) -> None:
        self._pins[slot] += 1

    def _unpin(self, slot: int) -> None:
        if self._pins[slot] <= 0:
            raise RuntimeError(f"expert cache: slot {slot} unpinned more often than pinned")
        self._pins[slot] -= 1

    # ---------------------------------------------------------------- prefetch
    def prefetch(self, layer: int, ids: Sequence[int], limit: int | None = None) -> int:
        """Start copies of predicted experts of `layer`; pin them until the layer's routing is known.

        Returns the number of copies issued. Experts already resident are pinned, not copied. Stops
        quietly when every remaining slot is pinned, or after `limit` experts (a prefetch is a hint;
        a miss is still correct). `ids` come best first, so the most likely experts are copied first.
        """
        self._drop_prefetch(layer)
        pf = self._prefetch[layer]
        issued = 0
        for e in ids:
            if limit is not None and len(pf.keys) >= limit:
                break
            key = (layer, int(e))
            if key in pf.keys:
                continue
            slot = self._slot_of.get(key)
            if slot is None:
                slot = self._take_slot()
                if slot is None:
                    break
                self._install(key, slot)
                self._copy_in(key, slot)
                self._fresh.add(key)
                issued += 1
            else:
                self._lru.move_to_end(key)
            self._pin(slot)
            pf.keys.add(key)
        c = self.counters
        c.prefetch_issued[layer] += issued
        c.bytes_prefetch += issued * self.layout.nbytes
        return issued

    def _drop_prefetch(self, layer: int) -> None:
        """Unpin an earlier prediction for `layer` that no routing consumed (counted as wasted)."""
        pf = self._prefetch[layer]
        for key in pf.keys:
            self._unpin(self._slot_of[key])
            if key in self._fresh:
                self._fresh.discard(key)
                self.counters.prefetch_wasted[layer] += 1
        pf.keys.clear()

    def has_prediction(self, layer: int) -> bool:
        return bool(self._prefetch[layer].keys)

    def room_for(self, layer: int) -> int:
        """How many of `layer`'s experts one acquire can take now (its predicted ones hold slots already)."""
        return self.capacity - self.pinned_slots() + len(self._prefetch[layer].keys)

    def unpin_prediction(self, layer: int) -> None:
        """Release `layer`'s prediction pins but keep their prefetch-hit status (used before chunking)."""
        pf = self._prefetch[layer]
        for key in pf.keys:
            self._unpin(self._slot_of[key])
        pf.keys.clear()

    def account_routing(self, layer: int, routed: Sequence[int]) -> None:
        """Once per layer-step, before acquire: score the prediction, settle the prefetch pins.

        Routed experts that were predicted keep their prefetch pin until `acquire` takes them;
        predicted experts that were not routed are unpinned, and count as wasted if a copy was made.
        """
        pf = self._prefetch[layer]
        c = self.counters
        if self.on_route is not None:
            self.on_route(layer, list(routed))
        routed_keys = {(layer, int(e)) for e in routed}
        if pf.keys:
            c.routed_scored[layer] += len(routed_keys)
            c.predicted_routed[layer] += len(routed_keys & pf.keys)
        for key in list(pf.keys):
            if key not in routed_keys:
                pf.keys.discard(key)
                self._unpin(self._slot_of[key])
                if key in self._fresh:
                    self._fresh.discard(key)
                    c.prefetch_wasted[layer] += 1

    # ---------------------------------------------------------------- acquire / release
    def acquire(self, layer: int, ids: Sequence[int], wait: bool = True) -> Acquired:
        """Make `ids` of `layer` resident, pin them for this step, and return their slots.

        On CUDA the current (compute) stream is made to wait for any copy still in flight; with
        `wait=False` that is left to a later `wait_for(acq)`, so a chunk's copies can be started
        while the previous chunk computes. Raises `CacheFull` if every slot is pinned.
        """
        c = self.counters
        pf = self._prefetch[layer]
        slots: list[int] = []
        kinds: list[str] = []
        events: list[torch.cuda.Event | None] = []
        t0 = time.perf_counter()
        demand = 0
        for e in ids:
            key = (layer, int(e))
            slot = self._slot_of.get(key)
            if slot is None:
                slot = self._take_slot()
                if slot is None:
                    for s in slots:
                        self._unpin(s)
                    raise CacheFull(
                        f"expert cache: {len(ids)} experts asked at once, {self.capacity} slots, "
                        f"{self.pinned_slots()} pinned"
                    )
                self._install(key, slot)
                self._copy_in(key, slot)
                kinds.append(MISS)
                c.misses[layer] += 1
                demand += 1
            else:
                kinds.append(self._hit(key))
            if key in self._landing:  # a streamed fill: the compute stream waits for its copy below
                self._show(key, slot)
            if key in pf.keys:  # the prefetch pin becomes the step pin
                pf.keys.discard(key)
            else:
                self._pin(slot)
            if self.cuda:
                events.append(self._copy_done[slot])
                self._copy_done[slot] = None
                self._unwaited.discard(slot)
            slots.append(slot)
        c.requests[layer] += len(ids)
        c.bytes_demand += demand * self.layout.nbytes
        acq = Acquired(layer, [int(e) for e in ids], slots, kinds, events=events)
        if self.cuda:
            if wait:
                self.wait_for(acq)
        else:
            acq.stall_seconds = time.perf_counter() - t0 if demand else 0.0
            if self.on_stall is not None:
                self.on_stall(acq.stall_seconds)
        return acq

    def wait_for(self, acq: Acquired) -> None:
        """Make the compute stream wait for `acq`'s copies (no-op on CPU or when already done)."""
        if self.cuda:
            waits = [ev for ev in acq.events if ev is not None]
            acq.events = [None] * len(acq.events)
            self._wait_on_device(waits, acq)
            self._close_stalls(acq)

    def wait_one(self, acq: Acquired, i: int) -> None:
        """Make the compute stream wait for the copy of `acq.ids[i]` alone, so the experts after it can
        still be arriving while this one computes. Call `finish_waits(acq)` after the last one."""
        if self.cuda and acq.events and acq.events[i] is not None:
            ev, acq.events[i] = acq.events[i], None
            self._wait_on_device([ev], acq)

    def finish_waits(self, acq: Acquired) -> None:
        if self.cuda:
            self._close_stalls(acq)

    def _wait_on_device(self, waits: list[torch.cuda.Event], acq: Acquired) -> None:
        if not waits:
            return
        stream = torch.cuda.current_stream(self.device)
        before = torch.cuda.Event(enable_timing=True)
        after = torch.cuda.Event(enable_timing=True)
        before.record(stream)
        for ev in waits:
            stream.wait_event(ev)
        after.record(stream)
        acq.stalls.append((before, after))

    def _close_stalls(self, acq: Acquired) -> None:
        """One stall observation per layer-step: the sum of its waits (read back by flush_stalls)."""
        if acq.stalls:
            self._pending_stalls.append(acq.stalls)
            acq.stalls = []
        elif self.on_stall is not None:
            self.on_stall(0.0)

    def release(self, acq: Acquired) -> None:
        """Unpin a step's experts; on CUDA, remember when the compute reading them is done."""
        if self.cuda:
            done = torch.cuda.Event(enable_timing=False)
            done.record(torch.cuda.current_stream(self.device))
        for slot in acq.slots:
            self._unpin(slot)
            if self.cuda:
                self._last_use[slot] = done

    def flush_stalls(self) -> list[float]:
        """Read back the stall times whose events completed (call after a step); returns seconds."""
        out, keep = [], []
        for pairs in self._pending_stalls:
            if pairs[-1][1].query():
                out.append(sum(before.elapsed_time(after) for before, after in pairs) / 1000.0)
            else:
                keep.append(pairs)
        self._pending_stalls = keep
        if self.on_stall is not None:
            for s in out:
                self.on_stall(s)
        return out

    # ---------------------------------------------------------------- device-side lookups
    def ready_on_device(self, layer: int, ids: Sequence[int]) -> bool:
        """True when the device can compute `layer`'s experts `ids` right now with no host action: all
        resident, their copies finished, the device slot-table row current. Then a captured step may
        run on before `account_routing` and `acquire` do the bookkeeping (nothing is evicted between)."""
        if layer in self._dirty:
            return False
        for e in ids:
            key = (layer, int(e))
            slot = self._slot_of.get(key)
            if slot is None or key in self._landing:  # a streamed fill: its table entry is still -1
                return False
            ev = self._copy_done[slot]
            if ev is not None and not ev.query():
                return False
        return True

    def sync_slot_table(self, layer: int) -> None:
        """Send `layer`'s slot-table row to the device if it changed (on the current stream)."""
        if layer in self._dirty:
            self._dirty.discard(layer)
            if self.cuda:
                self.slot_dev[layer].copy_(self.slot_host[layer], non_blocking=True)

    @property
    def holds_everything(self) -> bool:
        return len(self._slot_of) == self.store.total_experts and not self._landing

    def load_all(self) -> bool:
        """Copy every expert in (a warm start when the cache has a slot for each); True if it did.

        Preloaded experts are not counted as demand loads or prefetches: they are the cache's
        initial content, as resident weights are for a model without offloading.
        """
        if self.capacity < self.store.total_experts:
            return False
        for layer in range(self.store.num_layers):
            for e in range(self.layout.num_experts):
                key = (layer, e)
                if key not in self._slot_of:
                    slot = self._take_slot()
                    self._install(key, slot)
                    self._copy_in(key, slot)
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
            self._copy_done = [None] * self.capacity
            self._unwaited.clear()
            self.slot_dev.copy_(self.slot_host, non_blocking=True)
        self._dirty.clear()
        return True

    def count_resident(self, layer: int, routed: Sequence[int]) -> None:
        """Account a layer-step whose routed experts were all resident and used straight from the device
        (no acquire happened): requests and resident hits, LRU order, the routing observer."""
        if self.on_route is not None:
            self.on_route(layer, list(routed))
        c = self.counters
        c.requests[layer] += len(routed)
        c.hits_resident[layer] += len(routed)
        for e in routed:
            self._lru.move_to_end((layer, int(e)))
        if self.on_stall is not None:
            self.on_stall(0.0)

    # ---------------------------------------------------------------- streamed decode steps
    def stream_account(
        self, layer: int, routed: Sequence[int], slots_seen: Sequence[int], predicted: set[int] | None
    ) -> list[int]:
        """Account one layer of a streamed step that already ran: `routed` experts (distinct), the slot
        each was read from (-1: host memory) and the step's prediction for the layer (None: no policy).
        Returns the experts read from host memory (the misses)."""
        c = self.counters
        if self.on_route is not None:
            self.on_route(layer, list(routed))
        misses = []
        for e, slot in zip(routed, slots_seen, strict=True):
            key = (layer, int(e))
            if slot < 0:
                c.misses[layer] += 1
                misses.append(int(e))
            elif key in self._lru:  # found in its slot (and not evicted since)
                self._hit(key)
            else:
                c.hits_resident[layer] += 1
        c.requests[layer] += len(routed)
        c.bytes_host_read += len(misses) * self.layout.nbytes
        if predicted is not None:
            c.routed_scored[layer] += len(routed)
            c.predicted_routed[layer] += sum(1 for e in routed if int(e) in predicted)
        return misses

    def stream_queue(self, layer: int, ids: Sequence[int], prefetch: bool = False) -> None:
        """Queue `layer`'s experts `ids` to be copied in at the next `stream_publish` (those neither
        resident, landing nor queued already). Misses are queued before predictions."""
        for e in ids:
            key = (layer, int(e))
            if key not in self._slot_of and key not in self._queued:
                self._queued[key] = prefetch

    def stream_publish(self, max_inflight_bytes: int | None = None) -> int:
        """Before a streamed step is launched (host side, on the compute stream): landed copies become
        visible, queued experts get slots (evicting the least recently used) and their copies start
        behind this table upload, as many as keep the copies in flight under `max_inflight_bytes` (at
        least one when none is in flight; the rest are dropped: a miss queues its expert again).
        Returns the copies started."""
        if self._unwaited:  # copies made visible by prefetch or acquire (eager steps, prefill): the step
            stream = torch.cuda.current_stream(self.device)  # must not read their slots before they land
            for slot in self._unwaited:
                ev = self._copy_done[slot]
                if ev is not None:
                    stream.wait_event(ev)
                    self._copy_done[slot] = None
            self._unwaited.clear()
        for key, slot in list(self._landing.items()):
            ev = self._copy_done[slot]
            if ev is None or ev.query():
                self._copy_done[slot] = None
                self._show(key, slot)
        fills: list[tuple[Key, int]] = []
        c = self.counters
        budget = self.capacity
        if max_inflight_bytes is not None:
            budget = max(
                0 if self._landing else 1, max_inflight_bytes // self.layout.nbytes - len(self._landing)
            )
        for key, prefetch in self._queued.items():
            if key in self._slot_of:  # made resident since it was queued (a prefill or an eager step)
                continue
            if len(fills) >= budget:
                break
            slot = self._take_slot()
            if slot is None:
                break
            self._install(key, slot, visible=False)
            fills.append((key, slot))
            if prefetch:
                self._fresh.add(key)
                c.prefetch_issued[key[0]] += 1
                c.bytes_prefetch += self.layout.nbytes
            else:
                c.bytes_fill += self.layout.nbytes
        self._queued.clear()
        if self._dirty:
            self._dirty.clear()
            if self.cuda:
                self.slot_dev.copy_(self.slot_host, non_blocking=True)
        if not fills:
            return 0
        published = None
        if self.cuda:
            published = torch.cuda.Event()
            published.record(torch.cuda.current_stream(self.device))
        for key, slot in fills:
            self._copy_in(key, slot, after=published)
        return len(fills)

    def reset_prefetch(self) -> None:
        """Forget every outstanding prediction (e.g. after an aborted step)."""
        for layer in range(len(self._prefetch)):
            self._drop_prefetch(layer)
