"""Host-to-device copies of experts into the cache's slots, and the CUDA events that order them.

On CUDA every copy runs on one dedicated copy stream from pinned host memory and records an event;
the compute stream waits on those per-slot events instead of the host waiting, and a slot is never
overwritten before the compute that last read it is done (an event recorded at release). A copy whose
slot the device table shows before it lands is "unwaited" until some compute stream has waited for it.
On CPU every copy is synchronous and there are no events.

Coded copies (`copy_coded`, `engine.model.coding.attach_coded`): the copy stream moves an expert's code into one of
STAGING device buffers, and a second stream decodes it into the slot behind that copy, so the next copy
runs while a code decodes. The slot's event is the decode's; a staging buffer is reused only after its
last decode.

Imports torch only.
"""

from __future__ import annotations

import torch

STAGING = 4  # device buffers for codes in flight (coded copies)


class Copier:
    def __init__(self, num_slots: int, device: torch.device, coded=None) -> None:
        """`coded`: the store's `CodedStore` when copies move codes (None: plain copies)."""
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.coded = coded
        if coded is not None and self.cuda:
            self.decode_stream = torch.cuda.Stream(device=device)
            self.staging = [
                torch.empty(coded.max_nbytes, dtype=torch.uint8, device=device) for _ in range(STAGING)
            ]
            self.decoders = [coded.bind(buf) for buf in self.staging]  # each staging buffer's, bound once
            self.staging_free: list[torch.cuda.Event | None] = [None] * STAGING
            self._next = 0
        self.done: list[torch.cuda.Event | None] = [None] * num_slots  # each slot's last copy, not waited on
        self.last_use: list[torch.cuda.Event | None] = [None] * num_slots  # its last reader's end
        self.unwaited: set[int] = set()  # slots visible in the table whose copy no compute has waited for

    def copy(
        self, src: torch.Tensor, dst: torch.Tensor, slot: int, landing: bool, after: torch.cuda.Event | None
    ) -> None:
        """Copy `src` (pinned host) into `dst` (slot `slot` of the pool), behind `after` if given;
        `landing`: the table holds the slot back until the copy has landed (streamed fills)."""
        if self.cuda:
            with torch.cuda.stream(self.stream):
                if after is not None:
                    self.stream.wait_event(after)
                last = self.last_use[slot]
                if last is not None:
                    self.stream.wait_event(last)  # never overwrite weights still being read
                dst.copy_(src, non_blocking=True)
                ev = torch.cuda.Event(enable_timing=False)
                ev.record(self.stream)
            self._issued(slot, ev, landing)
        else:
            dst.copy_(src)

    def copy_coded(
        self, blob: torch.Tensor, dst: torch.Tensor, slot: int, landing: bool, after: torch.cuda.Event | None
    ) -> None:
        """`copy` of a coded expert: `blob` (its pinned code) copied to a staging buffer, decoded into `dst`."""
        coded = self.coded
        if not self.cuda:
            coded.decode(blob, dst)
            return
        k = self._next
        self._next = (k + 1) % STAGING
        stage = self.staging[k][: blob.numel()]
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            free = self.staging_free[k]
            if free is not None:
                self.stream.wait_event(free)  # its last code has been decoded
            stage.copy_(blob, non_blocking=True)
            copied = torch.cuda.Event(enable_timing=False)
            copied.record(self.stream)
        dec = self.decode_stream
        with torch.cuda.stream(dec):
            dec.wait_event(copied)
            last = self.last_use[slot]
            if last is not None:
                dec.wait_event(last)  # never overwrite weights still being read
            self.decoders[k](dst)
            ev = torch.cuda.Event(enable_timing=False)
            ev.record(dec)
        self.staging_free[k] = ev
        self._issued(slot, ev, landing)

    def _issued(self, slot: int, ev: torch.cuda.Event, landing: bool) -> None:
        self.done[slot] = ev
        if not landing:  # prefetch / acquire: the table shows it before the copy lands
            self.unwaited.add(slot)

    def claim(self, slot: int) -> torch.cuda.Event | None:
        """The event of `slot`'s copy for an acquire to wait on (None: nothing to wait for); CUDA only."""
        ev = self.done[slot]
        self.done[slot] = None
        self.unwaited.discard(slot)
        return ev

    def in_flight(self, slot: int) -> bool:
        """Whether `slot`'s last copy may still be running."""
        ev = self.done[slot]
        return ev is not None and not ev.query()

    def landed(self, slot: int) -> bool:
        """Whether `slot`'s last copy has finished (then nobody needs to wait for it any more)."""
        ev = self.done[slot]
        if ev is None or ev.query():
            self.done[slot] = None
            return True
        return False

    def forget(self, slot: int) -> None:
        """`slot` was evicted: no compute will wait for its copy."""
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
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        if self.coded is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.decode_stream)
        self.done = [None] * len(self.done)
        self.unwaited.clear()
