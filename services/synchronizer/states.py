"""The synchronizer's in-memory copy of recently used citizen states.

Rebuilding a state means decoding every stored event of the citizen (Avro, then pydantic)
and folding them: the synchronizer's largest cost when a batch touches citizens it saw
before. The cache keeps the folded state (snapshot, conflicts) with the stored bytes of the
events, not decoded events: an event that comes last in legal order merges without them,
and the others decode them on demand (`StoredEvents`). That keeps an entry at a few KB.
A cached state is only trusted when PostgreSQL still holds the same version
(`SyncStateStore.load` sends the events back otherwise), so another instance taking over a
partition, or a step retried after a failure, never works on a stale state.

A state that is not cached comes back from PostgreSQL the same way: with the fold of its
events, persisted beside them (`persisted_fold`, `restored`), so a backfill, where most
citizens were last seen long ago, does not decode and fold every earlier event again.

A citizen with a long history keeps its decoded events in legal order as well, once an
event landed among earlier ones (`CitizenState.ordered`, from `INDEXED_FROM` events): its
next refold then decodes nothing. With the state go the count of the citizen's events
applied today and its day (the daily cap), persisted in the same row.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from popsync.adapters.postgres.sync_state import StoredState
from popsync.contract import models as m
from popsync.domain.merge import FOLD_RULES_VERSION, CitizenState, Conflict


@dataclass(frozen=True)
class Known:
    """A citizen's decoded state, the stored bytes of its events by event id, and how many
    of them were applied on `day` (UTC, by arrival: the daily cap)."""

    state: CitizenState
    raw: dict[str, bytes]
    day: date | None = None
    applied_today: int = 0

    @property
    def version(self) -> int:
        return self.state.version

    def applied_on(self, day: date) -> int:
        """Events applied on `day` so far (none on a day other than the counted one)."""
        return self.applied_today if day == self.day else 0

    def compact(self, decode: Callable[[bytes], m.RegistryEvent]) -> Known:
        """The same state with its events read from the stored bytes when needed."""
        return replace(self, state=replace(self.state, events=StoredEvents(self.raw, decode)))


class StoredEvents(Mapping[str, m.RegistryEvent]):
    """A citizen's events as stored bytes by event id, decoded each time one is read."""

    def __init__(
        self, raw: Mapping[str, bytes], decode: Callable[[bytes], m.RegistryEvent]
    ) -> None:
        self._raw = raw
        self._decode = decode

    def __getitem__(self, event_id: str) -> m.RegistryEvent:
        return self._decode(self._raw[event_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class _Fold(BaseModel):
    """A citizen's fold as the synchronizer persists it (JSON, `sync_citizen_state.fold`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: int  # FOLD_RULES_VERSION of the code that folded it
    snapshot: m.CitizenSnapshot | None
    conflicts: dict[str, tuple[str, str]]  # event id -> (code, message)
    last_order: tuple[AwareDatetime, AwareDatetime, int, str] | None
    registered_birth: date | None


def persisted_fold(state: CitizenState) -> bytes:
    """What `restored` reads back: everything of `state` but its events."""
    fold = _Fold.model_construct(  # built from the domain's own values: nothing to validate
        rules=FOLD_RULES_VERSION,
        snapshot=state.snapshot,
        conflicts={k: (c.code, c.message) for k, c in state.conflicts.items()},
        last_order=state.last_order,
        registered_birth=state.registered_birth,
    )
    return fold.model_dump_json().encode()


def to_store(known: Known) -> StoredState:
    """The row that persists `known`: its events with their ids, and their fold."""
    return StoredState(
        known.version,
        list(known.raw.values()),
        list(known.raw),
        persisted_fold(known.state),
        known.day,
        known.applied_today,
    )


def restored(
    pin: str, stored: StoredState, decode: Callable[[bytes], m.RegistryEvent]
) -> Known | None:
    """The state a stored row describes, its events left as bytes (decoded when read);
    None when the events must be folded again: a row written before folds were kept, or
    by other fold rules."""
    if stored.events is None or stored.event_ids is None or stored.fold is None:
        return None
    if not stored.version == len(stored.events) == len(stored.event_ids):
        return None
    try:
        fold = _Fold.model_validate_json(stored.fold)
    except ValidationError:
        return None
    if fold.rules != FOLD_RULES_VERSION:
        return None
    raw = dict(zip(stored.event_ids, stored.events, strict=True))
    state = CitizenState(
        pin,
        events=StoredEvents(raw, decode),
        snapshot=fold.snapshot,
        conflicts={k: Conflict(code, text) for k, (code, text) in fold.conflicts.items()},
        last_order=fold.last_order,
        registered_birth=fold.registered_birth,
    )
    return Known(state, raw, stored.day, stored.applied_today)


# Most decoded events the cache keeps in legal-order indexes, all citizens together (about
# 2.7 KB each): a flood of out-of-order events on many citizens must not grow the worker.
INDEXED_EVENTS = 20_000


class StateCache:
    """Least-recently-used states, at most `capacity` citizens (0 disables it), and at most
    `indexed_events` decoded events in their indexes: beyond that, the least recently used
    indexes are dropped (the state stays; its next refold decodes its events again)."""

    def __init__(self, capacity: int, indexed_events: int = INDEXED_EVENTS) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Known] = OrderedDict()
        self._indexed_budget = indexed_events
        self._indexed: OrderedDict[str, int] = OrderedDict()  # pin -> events in its index
        self._indexed_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def indexed_events(self) -> int:
        return self._indexed_total

    def version(self, pin: str) -> int | None:
        known = self._entries.get(pin)
        return None if known is None else known.version

    def get(self, pin: str, version: int) -> Known | None:
        """The cached state of `pin` if it is exactly `version`."""
        known = self._entries.get(pin)
        if known is None or known.version != version:
            return None
        self._entries.move_to_end(pin)
        if pin in self._indexed:
            self._indexed.move_to_end(pin)
        return known

    def put(self, pin: str, known: Known) -> None:
        if self._capacity == 0:
            return
        self._forget_index(pin)
        self._entries[pin] = known
        self._entries.move_to_end(pin)
        if known.state.ordered is not None:
            self._indexed[pin] = len(known.state.ordered)
            self._indexed_total += len(known.state.ordered)
        while len(self._entries) > self._capacity:
            evicted, _ = self._entries.popitem(last=False)
            self._forget_index(evicted)
        while self._indexed_total > self._indexed_budget:
            oldest = next(iter(self._indexed))
            self._forget_index(oldest)
            entry = self._entries[oldest]
            self._entries[oldest] = replace(entry, state=replace(entry.state, ordered=None))

    def _forget_index(self, pin: str) -> None:
        self._indexed_total -= self._indexed.pop(pin, 0)
