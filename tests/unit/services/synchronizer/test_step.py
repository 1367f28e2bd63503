"""The synchronizer's step: each citizen's events of a batch applied together, within the
citizen's daily cap, the publishing source of every message named."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from popsync.services.synchronizer.step import SynchronizerStep

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.merge import CitizenState
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import StepResult
from popsync.runtime.sources import UNIDENTIFIED, UNVERIFIED
from popsync.settings import Settings
from popsync.trust.signing import VERIFIED_KEY_HEADER, VERIFIED_PUBLISHER_HEADER
from tests.builders import BIRTH, PIN, story, story_birth, story_move
from tests.fakes import InMemorySyncStates

CODEC = Codec(m.RegistryEvent)
UPDATES = Codec(m.CitizenUpdate)
SETTINGS = Settings()
NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)


def moves(count: int, first: int = 100) -> list[m.RegistryEvent]:
    return [
        story_move(n, BIRTH + timedelta(days=30 * n), f"{26700 + n % 90:05d}")
        for n in range(first, first + count)
    ]


def messages(events: list[m.RegistryEvent], offset: int = 0) -> list[InboundMessage]:
    return [
        InboundMessage("validated", 0, offset + i, PIN.encode(), CODEC.encode(e))
        for i, e in enumerate(events)
    ]


class Clock:
    def __init__(self) -> None:
        self.now = NOON

    def __call__(self) -> datetime:
        return self.now


class Synchronizer:
    """The step as the runtime drives it: the outputs are durable, then `finish` runs."""

    def __init__(
        self, states: InMemorySyncStates, cap: int = 1_000, clock: Clock | None = None
    ) -> None:
        processing = SETTINGS.processing.model_copy(update={"citizen_events_per_day": cap})
        self.clock = clock or Clock()
        self.step = SynchronizerStep(SETTINGS.topics, processing, states, self.clock)
        self.updates: list[m.CitizenUpdate] = []

    def __call__(self, batch: list[InboundMessage]) -> StepResult:
        result = asyncio.run(self.step(batch))
        self.updates += [
            UPDATES.decode(o.value)
            for o in result.outputs
            if o.topic == SETTINGS.topics.citizen_updates
        ]
        if result.finish is not None:
            asyncio.run(result.finish())
        return result


def test_the_cap_rejects_the_days_excess_with_its_event_and_the_next_day_passes() -> None:
    states = InMemorySyncStates()
    sync = Synchronizer(states, cap=3)
    events = [story_birth(), *moves(3)]
    result = sync(messages(events))
    assert [u.version for u in sync.updates] == [1, 2, 3]
    (rejected,) = result.rejected.items()
    assert rejected[0] == 3 and rejected[1].reason == "CITIZEN_DAILY_LIMIT"
    assert rejected[1].event == events[3]  # its id and source go with the dead letter
    assert PIN not in rejected[1].description
    assert (states.rows[PIN].day, states.rows[PIN].applied_today) == (NOON.date(), 3)

    again = sync(messages(events[3:], offset=10))  # the same day: still over
    assert list(again.rejected) == [0]
    sync.clock.now = NOON + timedelta(hours=12)  # 00:00 UTC: a new day
    replayed = sync(messages(events[3:], offset=20))
    assert not replayed.rejected and sync.updates[-1].version == 4
    assert (states.rows[PIN].day, states.rows[PIN].applied_today) == (date(2026, 3, 2), 1)


def test_duplicates_and_reused_ids_do_not_count() -> None:
    states = InMemorySyncStates()
    sync = Synchronizer(states, cap=2)
    birth, move = story_birth(), moves(1)[0]
    reused = move.model_copy(update={"source_sequence": 99})
    result = sync(messages([birth, birth, reused, move, move]))
    assert not result.rejected and [u.version for u in sync.updates] == [1, 2]
    assert not sync(messages([birth, move], offset=9)).rejected  # re-sent later: no-ops
    assert states.rows[PIN].applied_today == 2


def test_a_retried_batch_counts_once() -> None:
    states = InMemorySyncStates()
    sync = Synchronizer(states, cap=4)
    sync(messages([story_birth()]))
    batch = messages(moves(3), offset=1)
    states.fail_next_save = True
    with pytest.raises(ConnectionError):
        sync(batch)
    assert not sync(batch).rejected  # the retry: counted from the stored 1 again
    assert states.rows[PIN].applied_today == 4
    assert not sync(batch).rejected  # re-delivered after the save: duplicates
    assert states.rows[PIN].applied_today == 4
    assert list(sync(messages(moves(1, first=200), offset=9)).rejected) == [0]


def test_the_count_survives_a_restart() -> None:
    states = InMemorySyncStates()
    Synchronizer(states, cap=3)(messages([story_birth(), *moves(2)]))
    restarted = Synchronizer(states, cap=3)  # an empty cache
    assert list(restarted(messages(moves(1, first=200))).rejected) == [0]


def test_each_message_names_its_source_as_the_validator_verified_it() -> None:
    sync = Synchronizer(InMemorySyncStates())
    garbage = InboundMessage("validated", 0, 1, PIN.encode(), b"\x00not avro")
    verified = (("popsync.verified.publisher", b"dev-civil-status"),)
    miskeyed = InboundMessage(
        "validated", 0, 2, b"001185000102", CODEC.encode(story_birth()), verified
    )
    result = sync([*messages([story_birth()]), garbage, miskeyed])
    assert result.sources == [UNVERIFIED, UNIDENTIFIED, "dev-civil-status"]
    assert sorted(result.rejected) == [1, 2]


def test_reversed_events_in_batches_apply_to_the_folded_state() -> None:
    states = InMemorySyncStates()
    sync = Synchronizer(states)
    events = [*story(), *moves(90)]
    arrival = messages(events[::-1])
    for first in range(0, len(arrival), 25):
        sync(arrival[first : first + 25])
    assert [u.version for u in sync.updates] == list(range(1, len(events) + 1))
    reference = CitizenState.from_events(PIN, events)
    assert sync.updates[-1].snapshot == reference.current()
    assert states.rows[PIN].version == len(events)
    assert sorted(states.rows[PIN].event_ids or []) == sorted(e.event_id for e in events)


def test_an_update_names_the_publisher_and_key_the_validator_verified() -> None:
    sync = Synchronizer(InMemorySyncStates())
    birth, move = messages([story_birth(), *moves(1)])
    verified = InboundMessage(
        birth.topic,
        birth.partition,
        birth.offset,
        birth.key,
        birth.value,
        (
            (VERIFIED_PUBLISHER_HEADER, b"dev-civil-status"),
            (VERIFIED_KEY_HEADER, b"dev-civil-status-k1"),
        ),
    )
    sync([verified, move])
    assert [(u.publisher_id, u.key_id) for u in sync.updates] == [
        ("dev-civil-status", "dev-civil-status-k1"),
        (None, None),  # nothing verified on it: it names no one
    ]


def test_the_save_writes_the_store_rows_of_what_the_batch_emitted_with_the_states() -> None:
    states = InMemorySyncStates()
    sync = Synchronizer(states)
    events = [story_birth(), *moves(2)]
    batch = messages(events)
    states.fail_next_save = True  # the updates are out, the save fails: nothing is stored
    with pytest.raises(ConnectionError):
        sync(batch)
    assert states.history == {} and PIN not in states.rows
    sync(batch)  # the retry emits the same versions again and stores them once
    sync(batch)  # re-delivered after the save: duplicates, nothing emitted or stored
    assert [u.version for u in sync.updates] == [1, 2, 3, 1, 2, 3]
    stored = {version: u.event_id for (pin, version), u in states.history.items() if pin == PIN}
    assert stored == {1: events[0].event_id, 2: events[1].event_id, 3: events[2].event_id}
    assert states.rows[PIN].version == 3
