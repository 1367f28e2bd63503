"""The synchronizer's state cache: used only while the store holds the same version."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from popsync.services.synchronizer.states import (
    Known,
    StateCache,
    StoredEvents,
    restored,
    to_store,
)
from popsync.services.synchronizer.step import SynchronizerStep

from popsync.adapters.postgres.sync_state import StoredState
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.merge import (
    FOLD_RULES_VERSION,
    INDEXED_FROM,
    Applied,
    CitizenState,
    apply_event,
)
from popsync.runtime.messages import InboundMessage
from popsync.settings import Settings
from tests.builders import PIN, story, story_annulment, story_birth, story_move
from tests.fakes import InMemorySyncStates, RecordingProducer

CODEC = Codec(m.RegistryEvent)
UPDATES = Codec(m.CitizenUpdate)


def message(event: m.RegistryEvent, offset: int) -> InboundMessage:
    return InboundMessage("validated", 0, offset, PIN.encode(), CODEC.encode(event))


class Synchronizer:
    """The step as the runtime drives it, without its retries: the outputs are sent, then
    the step's finish runs (popsync.runtime.processing)."""

    def __init__(self, states: InMemorySyncStates, producer: RecordingProducer) -> None:
        settings = Settings()
        self.step = SynchronizerStep(settings.topics, settings.processing, states)
        self.producer = producer

    async def __call__(self, batch: list[InboundMessage]) -> None:
        result = await self.step(batch)
        await self.producer.send_all(result.outputs)
        if result.finish is not None:
            await result.finish()

    @property
    def _cache(self) -> StateCache:
        return self.step._cache


def step(states: InMemorySyncStates) -> tuple[Synchronizer, RecordingProducer]:
    producer = RecordingProducer()
    return Synchronizer(states, producer), producer


def versions(producer: RecordingProducer) -> list[int]:
    return [
        UPDATES.decode(m.value).version
        for m in producer.sent
        if m.topic == Settings().topics.citizen_updates
    ]


def test_a_citizen_seen_before_is_not_sent_back_by_the_store() -> None:
    states = InMemorySyncStates()
    sync, producer = step(states)
    asyncio.run(sync([message(story_birth(), 0)]))
    asyncio.run(sync([message(story_move(2, date(2010, 1, 1), "26734"), 1)]))
    assert versions(producer) == [1, 2]
    assert states.events_sent == 0  # the second batch used the cached state
    assert states.rows[PIN].version == 2


def test_the_cache_keeps_stored_bytes_not_decoded_events() -> None:
    states = InMemorySyncStates()
    sync, producer = step(states)
    events = [story_birth(), story_move(2, date(2010, 1, 1), "26734")]
    asyncio.run(sync([message(e, i) for i, e in enumerate(events)]))
    cached = sync._cache.get(PIN, 2)
    assert cached is not None and isinstance(cached.state.events, StoredEvents)
    assert dict(cached.state.events) == {e.event_id: e for e in events}  # decoded on demand
    # An earlier-dated event reads them back and folds them all again.
    asyncio.run(sync([message(story_move(3, date(2005, 1, 1), "26737"), 2)]))
    assert versions(producer) == [1, 2, 3]
    assert states.events_sent == 0


def test_a_state_advanced_elsewhere_is_rebuilt_from_the_store() -> None:
    """Another instance applied an event while this one held version 1 in its cache."""
    states = InMemorySyncStates()
    sync, producer = step(states)
    asyncio.run(sync([message(story_birth(), 0)]))
    elsewhere = story_move(2, date(2010, 1, 1), "26734")
    # As an instance of an earlier release would have left it: no ids, no fold.
    states.rows[PIN] = StoredState(2, [*states.events(PIN), CODEC.encode(elsewhere)])
    asyncio.run(sync([message(story_move(3, date(2012, 1, 1), "26737"), 5)]))
    assert versions(producer) == [1, 3]
    assert states.events_sent == 2
    assert len(states.events(PIN)) == 3


def test_a_failed_save_leaves_the_cache_as_the_store_is() -> None:
    states = InMemorySyncStates()
    sync, producer = step(states)
    asyncio.run(sync([message(story_birth(), 0)]))
    states.fail_next_save = True
    batch = [message(story_move(2, date(2010, 1, 1), "26734"), 1)]
    with pytest.raises(ConnectionError):
        asyncio.run(sync(batch))
    asyncio.run(sync(batch))  # the retry
    assert versions(producer) == [1, 2, 2]  # re-sent with the same version
    assert states.rows[PIN].version == 2 and len(states.events(PIN)) == 2


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


def stored_row(state: CitizenState) -> StoredState:
    raw = {event_id: CODEC.encode(event) for event_id, event in state.events.items()}
    return to_store(Known(state, raw))


def never_decode(_: bytes) -> m.RegistryEvent:
    raise AssertionError("a stored event was decoded")


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations([*story(), story_annulment(10, date(2024, 5, 1))]), cut=st.integers(1, 11)
)
def test_a_state_read_back_with_its_fold_is_the_state_folded_from_its_events(
    order: list[m.RegistryEvent], cut: int
) -> None:
    folded = CitizenState.from_events(PIN, order[:cut])
    back = restored(PIN, stored_row(folded), CODEC.decode)
    assert back is not None
    state = back.state
    assert (state.current(), dict(state.conflicts), state.version) == (
        folded.current(),
        dict(folded.conflicts),
        folded.version,
    )
    assert (state.last_order, state.registered_birth) == (
        folded.last_order,
        folded.registered_birth,
    )
    assert dict(state.events) == dict(folded.events)  # decoded on demand
    # And the next event merges onto it as onto the folded state.
    for following in order[cut:]:
        got, want = apply_event(state, following), apply_event(folded, following)
        assert isinstance(got, Applied) and isinstance(want, Applied)
        assert (got.snapshot, got.changed_fields, dict(got.new_conflicts)) == (
            want.snapshot,
            want.changed_fields,
            dict(want.new_conflicts),
        )
        state, folded = got.state, want.state


def test_a_state_read_back_merges_a_later_event_without_decoding_any() -> None:
    folded = CitizenState.from_events(PIN, story()[:7])
    back = restored(PIN, stored_row(folded), never_decode)
    assert back is not None
    outcome = apply_event(back.state, story_move(8, date(2023, 6, 1), "26740"))
    assert isinstance(outcome, Applied) and outcome.version == 8


def test_a_fold_of_other_rules_or_of_no_rules_is_not_trusted() -> None:
    row = stored_row(CitizenState.from_events(PIN, story()[:5]))
    other_rules = json.loads(row.fold or b"")
    other_rules["rules"] = FOLD_RULES_VERSION + 1
    for untrusted in (
        replace(row, fold=json.dumps(other_rules).encode()),
        replace(row, fold=None),  # written before folds were kept
        replace(row, event_ids=None),
        replace(row, fold=b"{not json"),
        replace(row, version=row.version + 1),  # does not describe these events
    ):
        assert restored(PIN, untrusted, CODEC.decode) is None


def test_a_restarted_synchronizer_reads_states_back_without_folding_them_again() -> None:
    states = InMemorySyncStates()
    first, _ = step(states)
    asyncio.run(first([message(e, i) for i, e in enumerate(story()[:7])]))
    assert states.rows[PIN].fold is not None and states.rows[PIN].event_ids is not None
    restarted, producer = step(states)  # an empty cache, as after a restart or rebalance
    asyncio.run(restarted([message(story_move(8, date(2023, 6, 1), "26740"), 7)]))
    assert versions(producer) == [8]
    reference = CitizenState.from_events(
        PIN, [*story()[:7], story_move(8, date(2023, 6, 1), "26740")]
    )
    (update,) = [UPDATES.decode(m.value) for m in producer.sent if m.topic.endswith("updates.v1")]
    assert update.snapshot == reference.current()


def indexed(pin: str, events: int) -> Known:
    moves = [
        story_move(n, date(2004, 1, 1) + timedelta(days=n), "26734") for n in range(2, events + 2)
    ]
    state = CitizenState.from_events(pin, [story_birth(), *moves])
    assert state.ordered is not None
    return Known(state, {})


def test_the_cache_keeps_at_most_its_budget_of_indexed_events() -> None:
    cache = StateCache(capacity=10, indexed_events=INDEXED_FROM * 3)
    cache.put("a", indexed("a", INDEXED_FROM))
    cache.put("b", indexed("b", INDEXED_FROM))
    assert cache.indexed_events == 2 * (INDEXED_FROM + 1)
    cache.get("a", INDEXED_FROM + 1)  # "a" is now the most recent
    cache.put("c", indexed("c", INDEXED_FROM))
    b = cache.get("b", INDEXED_FROM + 1)
    assert b is not None and b.state.ordered is None  # its index dropped, its state kept
    assert cache.indexed_events == 2 * (INDEXED_FROM + 1)
    cache.put("a", known("a"))  # replaced by a state without an index
    assert cache.indexed_events == INDEXED_FROM + 1
