"""The responses a server keeps for `previous_response_id` and GET / DELETE /v1/responses/{id}: the
`MOE_RESPONSE_STORE` most recently used, in this process's memory (0: none, every request stateless).

Each entry holds its response object as answered, the id of the response it continued, and its own turn
as chat-template messages (its input items and its output, not its `instructions`, which OpenAI does not
carry over to a continuation), so memory grows with the turns, not with their square; a continuation's
conversation is rebuilt by walking the links back (`conversation`), and every entry walked becomes most
recently used. A link that is gone (evicted, deleted, or answered by another replica) is reported by id.

Torch-free; used from the event loop only (no lock).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Stored:
    response: dict  # the response object as answered
    previous: str | None  # the response this one continued
    messages: tuple[dict, ...]  # this turn: its input items' messages, then its output's
    input_items: tuple[dict, ...] = ()  # this turn's input as items with ids (GET .../input_items)


class MissingResponse(KeyError):
    """A response a conversation needs is not stored; `args[0]` is its id."""


class ResponseStore:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("a response store holds zero or more responses")
        self.capacity = capacity
        self._entries: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response_id: str, stored: Stored) -> None:
        if self.capacity == 0:
            return
        self._entries[response_id] = stored
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        stored = self._entries.get(response_id)
        if stored is not None:
            self._entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        return self._entries.pop(response_id, None) is not None

    def conversation(self, response_id: str) -> tuple[dict, ...]:
        """Every turn's messages from the first response of the chain to `response_id`; raises
        `MissingResponse` with the first id that is not stored."""
        turns: list[tuple[dict, ...]] = []
        at: str | None = response_id
        while at is not None:
            stored = self.get(at)
            if stored is None:
                raise MissingResponse(at)
            turns.append(stored.messages)
            at = stored.previous
            if len(turns) > len(self._entries):  # ids are the server's own: a cycle is a bug
                raise RuntimeError(f"response store: the chain of {response_id} loops")
        return tuple(m for turn in reversed(turns) for m in turn)
