"""The synchronizer's in-memory copy of recently used citizen states.

Rebuilding a state means decoding every stored event of the citizen (Avro, then pydantic)
and folding them: the synchronizer's largest cost when a batch touches citizens it saw
before. The cache keeps the decoded state with the stored bytes; it is only trusted when
PostgreSQL still holds the same version (`SyncStateStore.load` sends the events back
otherwise), so another instance taking over a partition, or a step retried after a
failure, never works on a stale state.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from popsync.domain.merge import CitizenState


@dataclass(frozen=True)
class Known:
    """A citizen's decoded state and the stored bytes of its events, by event id."""

    state: CitizenState
    raw: dict[str, bytes]

    @property
    def version(self) -> int:
        return self.state.version


class StateCache:
    """Least-recently-used states, at most `capacity` citizens (0 disables it)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Known] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def version(self, pin: str) -> int | None:
        known = self._entries.get(pin)
        return None if known is None else known.version

    def get(self, pin: str, version: int) -> Known | None:
        """The cached state of `pin` if it is exactly `version`."""
        known = self._entries.get(pin)
        if known is None or known.version != version:
            return None
        self._entries.move_to_end(pin)
        return known

    def put(self, pin: str, known: Known) -> None:
        if self._capacity == 0:
            return
        self._entries[pin] = known
        self._entries.move_to_end(pin)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
