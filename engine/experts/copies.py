"""Host-to-device copies of experts into the cache's slots, and the CUDA events that order them.

On CUDA every copy runs on one dedicated copy stream from pinned host memory and records an event;
the compute stream waits on those per-slot events instead of the host waiting, and a slot is never
overwritten before the compute that last read it is done (an event recorded at release). A copy whose
slot the device table shows before it lands is "unwaited" until some compute stream has waited for it.
On CPU every copy is synchronous and there are no events.

`copy_all` issues a batch of copies (a prefetch's, an acquire's misses, a step's fills) under one switch to
the copy stream. Coded copies (`copy_coded`, `engine.model.coding.attach_coded`): the copy stream moves an expert's code into one of
STAGING rows of a device staging tensor, and a second stream decodes the codes copied since the last
decode into their slots in one call (`flush`: one launch per GROUP codes), so the next copies run while
codes decode. A batch is decoded when it fills the staging rows, when the cache's prefetch or acquire has
issued its copies, and before anything reads a slot's event; each slot's event is its batch's decode, and
a staging row is reused only after its batch's decode.

Imports torch only.
"""

from __future__ import annotations

import torch

STAGING = 8  # staging rows for codes in flight (coded copies): one batched decode launch's worth


class Copier:
    def __init__(
        self, num_slots: int, device: torch.device, coded=None, pool: torch.Tensor | None = None
    ) -> None:
        """`coded`: the store's `CodedStore` when copies move codes (None: plain copies); `pool`: the cache's
        slots ([S, numel] on `device`), where coded copies decode."""
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.coded = coded
        self._pending: list[
            tuple[int, int, bool]
        ] = []  # coded: (staging row, slot, landing) copied, not decoded
        if coded is not None and self.cuda:
            if pool is None:
                raise ValueError("coded copies on CUDA need the cache's pool (their decodes' destination)")
            self.decode_stream = torch.cuda.Stream(device=device)
            stride = -(-coded.max_nbytes // 16) * 16  # rows 16-aligned, like a blob's parts
            self.staging = torch.empty((STAGING, stride), dtype=torch.uint8, device=device)
            self._decode = coded.bind_many(self.staging, pool)  # bound once: jobs [(row, slot)]
            self.staging_free: list[torch.cuda.Event | None] = [None] * STAGING
            self._stage_views: dict[tuple[int, int], torch.Tensor] = {}
            self._next = 0
        self.done: list[torch.cuda.Event | None] = [None] * num_slots  # each slot's last copy, not waited on
        self.last_use: list[torch.cuda.Event | None] = [None] * num_slots  # its last reader's end
        self.unwaited: set[int] = set()  # slots visible in the table whose copy no compute has waited for

    def copy(
        self, src: torch.Tensor, dst: torch.Tensor, slot: int, landing: bool, after: torch.cuda.Event | None
    ) -> None:
        """Copy `src` (pinned host) into `dst` (slot `slot` of the pool), behind `after` if given;
        `landing`: the table holds the slot back until the copy has landed (streamed fills)."""
        self.copy_all([(src, dst, slot, landing)], after)

    def copy_coded(
        self, code: torch.Tensor, dst: torch.Tensor, slot: int, landing: bool, after: torch.cuda.Event | None
    ) -> None:
        """`copy` of a coded expert: `code` (its pinned code, `CodedStore.row`) copied to a staging row, decoded
        into `dst`."""
        self.copy_all([(code, dst, slot, landing)], after)

    def copy_all(self, jobs: list[tuple[torch.Tensor, torch.Tensor, int, bool]], after=None) -> None:
        """`copy` (or with coded copies `copy_coded`) of every (src, dst, slot, landing) of `jobs`, in order, behind
        `after` if given: on CUDA one switch to the copy stream for all of them (a layer's copies cost the
        host a few microseconds each, not a stream switch each)."""
        if not jobs:
            return
        if not self.cuda:
            for src, dst, _, _ in jobs:
                if self.coded is not None:
                    self.coded.decode(src, dst)
                else:
                    dst.copy_(src)
            return
        stream = self.stream
        with torch.cuda.stream(stream):
            if after is not None:
                stream.wait_event(after)
            for src, dst, slot, landing in jobs:
                if self.coded is not None:
                    self._stage(src, slot, landing)
                    continue
                last = self.last_use[slot]
                if last is not None:
                    stream.wait_event(last)  # never overwrite weights still being read
                dst.copy_(src, non_blocking=True)
                ev = torch.cuda.Event(enable_timing=False)
                ev.record(stream)
                self._issued(slot, ev, landing)

    def _stage(self, code: torch.Tensor, slot: int, landing: bool) -> None:
        """On the copy stream: `code` into the next staging row, to be decoded into `slot` at the next flush."""
        if len(self._pending) == STAGING:  # every staging row holds a code not yet decoded
            self.flush()
        k = self._next
        self._next = (k + 1) % STAGING
        n = code.numel()
        stage = self._stage_views.get((k, n))
        if stage is None:  # a view per (row, code width): the few widths a store's layers have
            stage = self._stage_views[(k, n)] = self.staging[k, :n]
        free = self.staging_free[k]
        if free is not None:
            self.stream.wait_event(free)  # its last code has been decoded
        stage.copy_(code, non_blocking=True)
        self._pending.append((k, slot, landing))

    def flush(self) -> None:
        """Decode every code copied since the last flush into its slot, on the decode stream (CUDA, coded)."""
        pending = self._pending
        if not pending:
            return
        copied = torch.cuda.Event(enable_timing=False)
        copied.record(self.stream)  # the copy stream runs in order: every pending code has landed after it
        dec = self.decode_stream
        with torch.cuda.stream(dec):
            dec.wait_event(copied)
            for _, slot, _ in pending:
                last = self.last_use[slot]
                if last is not None:
                    dec.wait_event(last)  # never overwrite weights still being read
            self._decode([(k, slot) for k, slot, _ in pending])
            ev = torch.cuda.Event(enable_timing=False)
            ev.record(dec)
        for k, slot, landing in pending:
            self.staging_free[k] = ev
            self._issued(slot, ev, landing)
        pending.clear()

    def _issued(self, slot: int, ev: torch.cuda.Event, landing: bool) -> None:
        self.done[slot] = ev
        if not landing:  # prefetch / acquire: the table shows it before the copy lands
            self.unwaited.add(slot)

    def claim(self, slot: int) -> torch.cuda.Event | None:
        """The event of `slot`'s copy for an acquire to wait on (None: nothing to wait for); CUDA only."""
        self.flush()
        ev = self.done[slot]
        self.done[slot] = None
        self.unwaited.discard(slot)
        return ev

    def in_flight(self, slot: int) -> bool:
        """Whether `slot`'s last copy may still be running."""
        self.flush()
        ev = self.done[slot]
        return ev is not None and not ev.query()

    def landed(self, slot: int) -> bool:
        """Whether `slot`'s last copy has finished (then nobody needs to wait for it any more)."""
        self.flush()
        ev = self.done[slot]
        if ev is None or ev.query():
            self.done[slot] = None
            return True
        return False

    def forget(self, slot: int) -> None:
        """`slot` was evicted: no compute will wait for its copy."""
        if any(p[1] == slot for p in self._pending):  # its code is still to be decoded
            self.flush()
        self.unwaited.discard(slot)

    def release_event(self) -> torch.cuda.Event | None:
        """An event at the current point of the compute stream, after which released slots may be
        overwritten (None on CPU)."""
        if not self.cuda:
            return None
        done = torch.cuda.Event(enable_timing=False)
        done.record(torch.cuda.current_stream(self.device))
        return done

    def wait_unwaited(self) -> None:
        """The compute stream waits for every copy the table shows but no compute has waited for."""
        self.flush()
        if self.unwaited:  # copies made visible by prefetch or acquire (eager steps, prefill): the step
            stream = torch.cuda.current_stream(self.device)  # must not read their slots before they land
            for slot in self.unwaited:
                ev = self.done[slot]
                if ev is not None:
                    stream.wait_event(ev)
                    self.done[slot] = None
            self.unwaited.clear()

    def published(self) -> torch.cuda.Event | None:
        """An event on the compute stream after the table upload that copies started now must follow."""
        if not self.cuda:
            return None
        published = torch.cuda.Event()
        published.record(torch.cuda.current_stream(self.device))
        return published

    def wait_all(self) -> None:
        """The compute stream waits for every copy issued so far (a warm start); CUDA only."""
        self.flush()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        if self.coded is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.decode_stream)
        self.done = [None] * len(self.done)
        self.unwaited.clear()
