"""The synchronizer's state cache: used only while the store holds the same version."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import date

import pytest
from popsync.services.synchronizer.app import SynchronizerStep
from popsync.services.synchronizer.states import Known, StateCache, StoredEvents

from popsync.adapters.store import StoredState
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.merge import CitizenState
from popsync.runtime import InboundMessage
from popsync.settings import Settings
from tests.unit.test_deadletter import RecordingProducer
from tests.unit.test_merge import PIN, birth, move

CODEC = Codec(m.RegistryEvent)
UPDATES = Codec(m.CitizenUpdate)


class MemoryStates:
    """SyncStateStore's contract in memory, counting the events it sends back."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, list[bytes]]] = {}
        self.events_sent = 0
        self.fail_next_save = False

    async def load(self, known: Mapping[str, int | None]) -> dict[str, StoredState]:
        found: dict[str, StoredState] = {}
        for pin, held in known.items():
            if pin in self.rows:
                version, events = self.rows[pin]
                same = held == version
                found[pin] = StoredState(version, None if same else list(events))
                self.events_sent += 0 if same else len(events)
        return found

    async def save(self, states: Mapping[str, tuple[int, Sequence[bytes]]]) -> None:
        if self.fail_next_save:
            self.fail_next_save = False
            raise ConnectionError("store went away")
        for pin, (version, events) in states.items():
            if self.rows.get(pin, (0, []))[0] < version:
                self.rows[pin] = (version, list(events))


def message(event: m.RegistryEvent, offset: int) -> InboundMessage:
    return InboundMessage("validated", 0, offset, PIN.encode(), CODEC.encode(event))


def step(states: MemoryStates) -> tuple[SynchronizerStep, RecordingProducer]:
    producer = RecordingProducer()
    return SynchronizerStep(Settings(), producer, states), producer  # type: ignore[arg-type]


def versions(producer: RecordingProducer) -> list[int]:
    return [
        UPDATES.decode(m.value).version
        for m in producer.sent
        if m.topic == Settings().topics.citizen_updates
    ]


def test_a_citizen_seen_before_is_not_sent_back_by_the_store() -> None:
    states = MemoryStates()
    sync, producer = step(states)
    asyncio.run(sync([message(birth(), 0)]))
    asyncio.run(sync([message(move(2, date(2010, 1, 1), "26734"), 1)]))
    assert versions(producer) == [1, 2]
    assert states.events_sent == 0  # the second batch used the cached state
    assert states.rows[PIN][0] == 2


def test_the_cache_keeps_stored_bytes_not_decoded_events() -> None:
    states = MemoryStates()
    sync, producer = step(states)
    events = [birth(), move(2, date(2010, 1, 1), "26734")]
    asyncio.run(sync([message(e, i) for i, e in enumerate(events)]))
    cached = sync._cache.get(PIN, 2)
    assert cached is not None and isinstance(cached.state.events, StoredEvents)
    assert dict(cached.state.events) == {e.event_id: e for e in events}  # decoded on demand
    # An earlier-dated event reads them back and folds them all again.
    asyncio.run(sync([message(move(3, date(2005, 1, 1), "26737"), 2)]))
    assert versions(producer) == [1, 2, 3]
    assert states.events_sent == 0


def test_a_state_advanced_elsewhere_is_rebuilt_from_the_store() -> None:
    """Another instance applied an event while this one held version 1 in its cache."""
    states = MemoryStates()
    sync, producer = step(states)
    asyncio.run(sync([message(birth(), 0)]))
    elsewhere = move(2, date(2010, 1, 1), "26734")
    states.rows[PIN] = (2, [*states.rows[PIN][1], CODEC.encode(elsewhere)])
    asyncio.run(sync([message(move(3, date(2012, 1, 1), "26737"), 5)]))
    assert versions(producer) == [1, 3]
    assert states.events_sent == 2
    assert len(states.rows[PIN][1]) == 3


def test_a_failed_save_leaves_the_cache_as_the_store_is() -> None:
    states = MemoryStates()
    sync, producer = step(states)
    asyncio.run(sync([message(birth(), 0)]))
    states.fail_next_save = True
    batch = [message(move(2, date(2010, 1, 1), "26734"), 1)]
    with pytest.raises(ConnectionError):
        asyncio.run(sync(batch))
    asyncio.run(sync(batch))  # the retry
    assert versions(producer) == [1, 2, 2]  # re-sent with the same version
    assert states.rows[PIN][0] == 2 and len(states.rows[PIN][1]) == 2


def known(pin: str) -> Known:
    return Known(CitizenState(pin), {})


def test_the_cache_keeps_the_most_recently_used_citizens() -> None:
    cache = StateCache(capacity=2)
    for pin in ("a", "b"):
        cache.put(pin, known(pin))
    assert cache.get("a", 0) is not None  # "a" is now the most recent
    cache.put("c", known("c"))
    assert cache.version("b") is None and cache.version("a") == 0 and len(cache) == 2
    assert cache.get("a", 1) is None  # another version is never served


def test_a_cache_of_capacity_zero_holds_nothing() -> None:
    cache = StateCache(capacity=0)
    cache.put("a", known("a"))
    assert len(cache) == 0
