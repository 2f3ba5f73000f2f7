"""The device expert cache: a pool of slots, an eviction order (LRU or LFU), pins, prefetch and acquire.

Owns the device copies of experts. `prefetch(layer, ids)` starts copies of predicted experts;
`acquire(layer, ids)` makes routed experts resident and returns their slots, classifying each as a
resident hit, a prefetch hit (brought by a prefetch, first use) or a miss (demand load, a stall);
`release()` unpins them. An entry is pinned while a step uses it or while its prefetch awaits the
layer's routing, and pinned entries are never evicted.

This class is the facade; each part has its module: `slots` (allocation, pins, the eviction order of
`eviction` and its clock), `copies` (the copy stream and its events), `stalls` (stall timing),
`accounting` (counters, prediction scoring and the prediction pins), `slot_table` (the device slot
table), `streamed` (the fill queue of streamed steps), `hooks` (the listener it reports to and the
routing barrier it waits on). It keeps them in step: an install or eviction updates the slots, the
table, the copies' bookkeeping and the counters. On CPU everything is synchronous.

Hot path note: ids arrive as Python ints (the routed ids are read on the host once per layer).

Imports `engine.api` only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from engine.api.stats import CacheCounters
from engine.experts.accounting import Accounting
from engine.experts.copies import Copier
from engine.experts.hooks import CacheListener, Listener, RoutingBarrier
from engine.experts.slot_table import SlotTable
from engine.experts.slots import MISS, Acquired, CacheFull, Key, SlotPool
from engine.experts.stalls import StallTimer
from engine.experts.store import ExpertStore
from engine.experts.streamed import FillQueue, fill_budget


class ExpertCache:
    def __init__(
        self,
        store: ExpertStore,
        num_slots: int,
        device: torch.device,
        counters: CacheCounters | None = None,
        listener: CacheListener | None = None,
        eviction=None,
    ) -> None:
        """`eviction`: an order of `engine.experts.eviction` (`build_eviction`); default LRU."""
        if num_slots < 1:
            raise ValueError("the expert cache needs at least one slot")
        self.store = store
        self.layout = store.layout
        self.device = device
        self.capacity = num_slots
        self.cuda = device.type == "cuda"
        self.pool = torch.empty((num_slots, self.layout.numel), dtype=self.layout.dtype, device=device)
        self.weights = self.layout.views(self.pool)  # name -> [S, *shape]
        self._pool_rows = self.pool.unbind(0)  # slot -> its [numel] row, made once
        self.counters = counters or CacheCounters(store.num_layers)
        self.counters.slots_capacity = num_slots
        self._listener: CacheListener = listener or Listener()
        self._barrier: RoutingBarrier | None = None
        self._slots = SlotPool(num_slots, eviction)
        self._accounts = Accounting(self._slots, self.counters, store.num_layers, self.layout.nbytes)
        self.coded = store.coded  # when set, copies move codes and decode them (engine.model.coding)
        self._copies = Copier(num_slots, device, self.coded, self.pool)
        coded = self.coded  # the bytes one copy moves over PCIe (coded: the mean code), for the counters
        self.copy_nbytes = (
            self.layout.nbytes if coded is None else round(coded.coded_bytes / store.total_experts)
        )
        self._stalls = StallTimer(device)
        self.copy_stream = self._copies.stream
        self._table = SlotTable(store.num_layers, self.layout.num_experts, device)
        self.slot_host = self._table.host  # [L, E] pinned mirror
        self.slot_dev = self._table.dev  # [L, E] on the device
        self.fills = FillQueue()

    # ---------------------------------------------------------------- hooks
    def listen(self, listener: CacheListener | None) -> None:
        """Report every layer-step's stall and routed experts to `listener` from now on (None: nobody)."""
        self._listener = listener or Listener()

    def set_routing_barrier(self, barrier: RoutingBarrier | None) -> None:
        """`barrier.wait()` runs before each eagerly routed layer is accounted (None: no barrier)."""
        self._barrier = barrier

    def before_routing(self) -> None:
        """Wait for the routing barrier, if one is set (a prefetch still being issued finishes first)."""
        if self._barrier is not None:
            self._barrier.wait()

    # ---------------------------------------------------------------- queries
    def resident(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._slots

    def resident_keys(self) -> list[Key]:
        return self._slots.keys()

    def pinned_slots(self) -> int:
        return self._slots.pinned()

    # ---------------------------------------------------------------- internals
    def _take_slot(self) -> int | None:
        if self._slots.free:
            return self._slots.free.pop()
        key = self._slots.victim()
        return None if key is None else self._evict(key)

    def _evict(self, key: Key) -> int:
        slot = self._slots.remove(key)
        self._table.clear(key)
        self._copies.forget(slot)
        self._accounts.evicted(key)
        self.counters.slots_used -= 1
        return slot

    def _install(self, key: Key, slot: int, visible: bool = True) -> None:
        self._slots.add(key, slot)
        if visible:
            self._table.show(key, slot)
        else:  # the table says -1 until the copy has landed (streamed steps)
            self._table.hold(key, slot)
        self.counters.slots_used += 1

    def _copy_job(self, key: Key, slot: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        """(src, dst, slot, landing) for `Copier.copy_all`: `key`'s pinned row (coded: its code's row, decoded
        on the device) into the slot's row of the pool; `landing`: the table holds it back until it lands."""
        src = self.coded.row(*key) if self.coded is not None else self.store.row(*key)
        return src, self._pool_rows[slot], slot, key in self._table.landing

    # ---------------------------------------------------------------- prefetch
    def prefetch(self, layer: int, ids: Sequence[int], limit: int | None = None) -> int:
        """Start copies of predicted experts of `layer`; pin them until the layer's routing is known.

        Returns the number of copies issued. Experts already resident are pinned, not copied. Stops
        quietly when every remaining slot is pinned, or after `limit` experts (a prefetch is a hint;
        a miss is still correct). `ids` come best first, so the most likely experts are copied first.
        """
        self._accounts.unwind(layer)  # an earlier prediction no routing consumed: wasted
        pf = self._accounts.pending[layer]
        jobs = []
        for e in ids:
            if limit is not None and len(pf) >= limit:
                break
            key = (layer, int(e))
            if key in pf:
                continue
            slot = self._slots.get(key)
            if slot is None:
                slot = self._take_slot()
                if slot is None:
                    break
                self._install(key, slot)
                jobs.append(self._copy_job(key, slot))  # issued after the loop, in this order
                self._accounts.fresh.add(key)
            else:
                self._slots.touch(key, routed=False)
            self._slots.pin(slot)
            pf.add(key)
        issued = len(jobs)
        self._copies.copy_all(jobs)  # pinned slots: no later eviction in the loop can have touched them
        self._copies.flush()  # a coded cache decodes this prediction's copies now, in one batch
        c = self.counters
        c.prefetch_issued[layer] += issued
        c.bytes_prefetch += issued * self.copy_nbytes
        return issued

    def room_for(self, layer: int) -> int:
        """How many of `layer`'s experts one acquire can take now (its predicted ones hold slots already)."""
        return self.capacity - self.pinned_slots() + len(self._accounts.pending[layer])

    def unpin_prediction(self, layer: int) -> None:
        """Release `layer`'s prediction pins but keep their prefetch-hit status (used before chunking)."""
        self._accounts.unwind(layer, wasted=False)

    def account_routing(self, layer: int, routed: Sequence[int]) -> None:
        """Once per layer-step, before acquire: score the prediction, settle the prefetch pins.

        Routed experts that were predicted keep their prefetch pin until `acquire` takes them;
        predicted experts that were not routed are unpinned, and count as wasted if a copy was made.
        """
        self._slots.tick()
        self._listener.on_route(layer, list(routed))
        self._accounts.account_routing(layer, routed)

    def count_host(self, layer: int, experts: Sequence[int]) -> None:
        """After `account_routing`: these routed experts missed and were computed on the host (hybrid
        misses), so `acquire` never sees them."""
        self._accounts.count_host(layer, experts)

    def reset_prefetch(self) -> None:
        """Forget every outstanding prediction (e.g. after an aborted step)."""
        for layer in range(len(self._accounts.pending)):
            self._accounts.unwind(layer)

    # ---------------------------------------------------------------- acquire / release
    def acquire(self, layer: int, ids: Sequence[int], wait: bool = True) -> Acquired:
        """Make `ids` of `layer` resident, pin them for this step, and return their slots.

        On CUDA the current (compute) stream is made to wait for any copy still in flight; with
        `wait=False` that is left to a later `wait_for(acq)`, so a chunk's copies can be started
        while the previous chunk computes. Raises `CacheFull` if every slot is pinned.
        """
        c = self.counters
        pf = self._accounts.pending[layer]
        slots: list[int] = []
        kinds: list[str] = []
        events: list[torch.cuda.Event | None] = []
        t0 = time.perf_counter()
        demand = 0
        jobs = []
        for e in ids:
            key = (layer, int(e))
            slot = self._slots.get(key)
            if slot is None:
                slot = self._take_slot()
                if slot is None:
                    self._copies.copy_all(jobs)  # the misses installed so far are resident: copy them
                    for s in slots:
                        self._slots.unpin(s)
                    raise CacheFull(
                        f"expert cache: {len(ids)} experts asked at once, {self.capacity} slots, "
                        f"{self.pinned_slots()} pinned"
                    )
                self._slots.use(key)  # a routed use, counted before the order takes the key in (LFU)
                self._install(key, slot)
                jobs.append(self._copy_job(key, slot))  # issued after the loop, in this order
                kinds.append(MISS)
                c.misses[layer] += 1
                demand += 1
            else:
                kinds.append(self._accounts.hit(key))
            if key in self._table.landing:  # a streamed fill: the compute stream waits for its copy below
                self._table.show(key, slot)
            if key in pf:  # the prefetch pin becomes the step pin
                pf.discard(key)
            else:
                self._slots.pin(slot)
            slots.append(slot)
        self._copies.copy_all(jobs)  # the misses' copies (their slots are pinned: nothing evicted them)
        if self.cuda:  # after the loop: a coded cache decodes this acquire's copies in one batch
            events = [self._copies.claim(slot) for slot in slots]
        c.requests[layer] += len(ids)
        c.bytes_demand += demand * self.copy_nbytes
        acq = Acquired(layer, [int(e) for e in ids], slots, kinds, events=events)
        if self.cuda:
            if wait:
                self.wait_for(acq)
        else:
            acq.stall_seconds = time.perf_counter() - t0 if demand else 0.0
            self._listener.on_stall(acq.stall_seconds)
        return acq

    def wait_for(self, acq: Acquired) -> None:
        """Make the compute stream wait for `acq`'s copies (no-op on CPU or when already done)."""
        if self.cuda:
            waits = [ev for ev in acq.events if ev is not None]
            acq.events = [None] * len(acq.events)
            self._stalls.wait(waits, acq)
            self._close_stalls(acq)

    def wait_one(self, acq: Acquired, i: int) -> None:
        """Make the compute stream wait for the copy of `acq.ids[i]` alone, so the experts after it can
        still be arriving while this one computes. Call `finish_waits(acq)` after the last one."""
        if self.cuda and acq.events and acq.events[i] is not None:
            ev, acq.events[i] = acq.events[i], None
            self._stalls.wait([ev], acq)

    def finish_waits(self, acq: Acquired) -> None:
        if self.cuda:
            self._close_stalls(acq)

    def _close_stalls(self, acq: Acquired) -> None:
        """One stall observation per layer-step: the sum of its waits (read back by flush_stalls)."""
        if not self._stalls.close(acq):
            self._listener.on_stall(0.0)

    def release(self, acq: Acquired) -> None:
        """Unpin a step's experts; on CUDA, remember when the compute reading them is done."""
        done = self._copies.release_event()
        for slot in acq.slots:
            self._slots.unpin(slot)
            if done is not None:
                self._copies.last_use[slot] = done

    def flush_stalls(self) -> list[float]:
        """Read back the stall times whose events completed (call after a step); returns seconds."""
        out = self._stalls.flush()
        for s in out:
            self._listener.on_stall(s)
        return out

    # ---------------------------------------------------------------- device-side lookups
    def ready_on_device(self, layer: int, ids: Sequence[int]) -> bool:
        """True when the device can compute `layer`'s experts `ids` right now with no host action: all
        resident, their copies finished, the device slot-table row current. Then a captured step may
        run on before `account_routing` and `acquire` do the bookkeeping (nothing is evicted between)."""
        if layer in self._table.dirty:
            return False
        for e in ids:
            key = (layer, int(e))
            slot = self._slots.get(key)
            if slot is None or key in self._table.landing:  # a streamed fill: its table entry is still -1
                return False
            if self._copies.in_flight(slot):
                return False
        return True

    def sync_slot_table(self, layer: int) -> None:
        """Send `layer`'s slot-table row to the device if it changed (on the current stream)."""
        self._table.sync(layer)

    @property
    def holds_everything(self) -> bool:
        return len(self._slots) == self.store.total_experts and not self._table.landing

    def load_all(self) -> bool:
        """Copy every expert in (a warm start when the cache has a slot for each); True if it did.

        Preloaded experts are not counted as demand loads or prefetches: they are the cache's
        initial content, as resident weights are for a model without offloading.
        """
        if self.capacity < self.store.total_experts:
            return False
        jobs = []
        for layer in range(self.store.num_layers):
            for e in range(self.layout.num_experts):
                key = (layer, e)
                if key not in self._slots:
                    slot = self._take_slot()
                    self._install(key, slot)
                    jobs.append(self._copy_job(key, slot))
        self._copies.copy_all(jobs)
        if self.cuda:
            self._copies.wait_all()
        self._table.upload(always=True)
        return True

    def count_resident(self, layer: int, routed: Sequence[int]) -> None:
        """Account a layer-step whose routed experts were all resident and used straight from the device
        (no acquire happened): requests and resident hits, the eviction order, the routing observer."""
        self._slots.tick()
        self._listener.on_route(layer, list(routed))
        self._accounts.count_resident(layer, routed)
        self._listener.on_stall(0.0)

    # ---------------------------------------------------------------- streamed decode steps
    def stream_account(
        self, layer: int, routed: Sequence[int], slots_seen: Sequence[int], predicted: set[int] | None
    ) -> list[int]:
        """Account one layer of a streamed step that already ran: `routed` experts (distinct), the slot
        each was read from (-1: host memory) and the step's prediction for the layer (None: no policy).
        Returns the experts read from host memory (the misses)."""
        self._slots.tick()
        self._listener.on_route(layer, list(routed))
        return self._accounts.stream_account(layer, routed, slots_seen, predicted)

    def stream_queue(self, layer: int, ids: Sequence[int], prefetch: bool = False) -> None:
        """Queue `layer`'s experts `ids` to be copied in at the next `stream_publish` (those neither
        resident, landing nor queued already). Misses are queued before predictions."""
        self.fills.add(self._slots, layer, ids, prefetch)

    def stream_publish(self, max_inflight_bytes: int | None = None) -> int:
        """Before a streamed step is launched (host side, on the compute stream): landed copies become
        visible, queued experts get slots (evicting the least recently used) and their copies start
        behind this table upload, as many as keep the copies in flight under `max_inflight_bytes` (at
        least one when none is in flight; the rest are dropped: a miss queues its expert again).
        Returns the copies started. (`engine.experts.streamed` says why no step reads a slot being
        written.)"""
        self._copies.wait_unwaited()
        for key, slot in list(self._table.landing.items()):
            if self._copies.landed(slot):
                self._table.show(key, slot)
        fills: list[tuple[Key, int]] = []
        c = self.counters
        budget = fill_budget(self.capacity, self.layout.nbytes, len(self._table.landing), max_inflight_bytes)
        for key, prefetch in self.fills.drain():
            if key in self._slots:  # made resident since it was queued (a prefill or an eager step)
                continue
            if len(fills) >= budget:
                break
            slot = self._take_slot()
            if slot is None:
                break
            self._install(key, slot, visible=False)
            fills.append((key, slot))
            if prefetch:
                self._accounts.fresh.add(key)
                c.prefetch_issued[key[0]] += 1
                c.bytes_prefetch += self.copy_nbytes
            else:
                c.bytes_fill += self.copy_nbytes
        self._table.upload()
        if not fills:
            return 0
        published = self._copies.published()
        self._copies.copy_all([self._copy_job(key, slot) for key, slot in fills], after=published)
        self._copies.flush()  # a coded cache decodes these fills in one batch
        return len(fills)
