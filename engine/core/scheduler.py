"""Request admission and fairness. Torch-free, thread-safe.

Requests wait in FIFO order (at most `max_waiting`, or `QueueFull`), and up to `max_running` run;
the engine thread gives every running request one token per round, so streams advance together.
Aborts are flags the engine thread honours at its next round.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, Protocol, TypeVar

from engine.api.errors import QueueFull


class HasId(Protocol):
    request_id: str


T = TypeVar("T", bound=HasId)


class Scheduler(Generic[T]):
    def __init__(self, max_running: int, max_waiting: int) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self._waiting: deque[T] = deque()
        self._running: list[T] = []
        self._aborted: set[str] = set()
        self._dropped: list[T] = []  # aborted while waiting; the engine thread records them
        self._cv = threading.Condition()

    def submit(self, item: T) -> None:
        with self._cv:
            room = self.max_running - len(self._running)
            if len(self._waiting) >= self.max_waiting + max(0, room):
                raise QueueFull(
                    f"server busy: {len(self._waiting)} requests already waiting (MOE_MAX_WAITING)"
                )
            self._waiting.append(item)
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._aborted.add(request_id)
            self._cv.notify()

    def is_aborted(self, request_id: str) -> bool:
        with self._cv:
            return request_id in self._aborted

    def admit(self) -> list[T]:
        """Move waiting requests into the running set (FIFO); drop aborted waiting ones; return the running set."""
        with self._cv:
            dropped = [w for w in self._waiting if w.request_id in self._aborted]
            for w in dropped:
                self._waiting.remove(w)
                self._aborted.discard(w.request_id)
            while self._waiting and len(self._running) < self.max_running:
                self._running.append(self._waiting.popleft())
            self._dropped = dropped
            return list(self._running)

    def take_dropped(self) -> list[T]:
        with self._cv:
            out, self._dropped = self._dropped, []
            return out

    def finish(self, item: T) -> None:
        with self._cv:
            if item in self._running:
                self._running.remove(item)
            self._aborted.discard(item.request_id)

    def wait_for_work(self, timeout: float) -> None:
        with self._cv:
            if not self._waiting and not self._running:
                self._cv.wait(timeout)

    def drain(self) -> list[T]:
        with self._cv:
            items = list(self._running) + list(self._waiting)
            self._running.clear()
            self._waiting.clear()
            return items

    @property
    def counts(self) -> tuple[int, int]:
        with self._cv:
            return len(self._running), len(self._waiting)
