"""`services.synchronizer.step.SyncStates`: unknown pins are absent; a load sends a state's
contents back unless the caller holds its version already; a save only moves a state forward
in version; every field round-trips, the daily count included, so the synchronizer's daily
cap holds across restarts. Run against `tests.fakes.InMemorySyncStates` and
`popsync.adapters.postgres.sync_state.SyncStateStore`."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from popsync.adapters.postgres.sync_state import StoredState
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime.messages import InboundMessage
from popsync.settings import Settings
from services.synchronizer.step import SynchronizerStep
from tests.builders import BIRTH, PIN, story_birth, story_move

if TYPE_CHECKING:
    from services.synchronizer.step import SyncStates

pytestmark = pytest.mark.integration

AN = "079203000123"
BINH = "001185000102"
CUONG = "001199000103"


def state(version: int, *events: bytes, fold: bytes | None = b"{}") -> StoredState:
    return StoredState(
        version, list(events), [f"ev-{version}-{i}" for i in range(len(events))], fold
    )


def test_nothing_is_known_at_first(sync_states: SyncStates) -> None:
    async def scenario() -> None:
        assert await sync_states.load({}) == {}
        assert await sync_states.load({AN: None, BINH: 3}) == {}
        await sync_states.save({})
        assert await sync_states.load({AN: None}) == {}

    asyncio.run(scenario())


def test_only_stored_pins_are_loaded(sync_states: SyncStates) -> None:
    async def scenario() -> None:
        await sync_states.save({AN: state(1, b"birth")})
        assert await sync_states.load({AN: None, BINH: None, CUONG: 1}) == {AN: state(1, b"birth")}

    asyncio.run(scenario())


def test_every_field_round_trips(sync_states: SyncStates) -> None:
    states = {
        AN: StoredState(3, [b"\x00\x01avro\xff", b"", b"third"], ["a", "b", "c"], b"\x00{}"),
        BINH: StoredState(1, [], [], b""),
        CUONG: StoredState(2, [b"written before event ids and folds were kept"], None, None),
        "079303000999": StoredState(2, [b"a", b"b"], ["a", "b"], b"{}", date(2026, 3, 1), 2),
    }

    async def scenario() -> None:
        await sync_states.save(states)
        assert await sync_states.load(dict.fromkeys(states)) == states

    asyncio.run(scenario())


def test_the_contents_come_back_unless_the_caller_holds_that_version(
    sync_states: SyncStates,
) -> None:
    async def scenario() -> None:
        await sync_states.save({AN: state(4, b"a", b"b"), BINH: state(2, b"c")})
        assert await sync_states.load({AN: 4, BINH: 2}) == {
            AN: StoredState(4, None, None, None),
            BINH: StoredState(2, None, None, None),
        }
        for held in (None, 3, 5):  # none, an older one, one the store never had
            assert await sync_states.load({AN: held}) == {AN: state(4, b"a", b"b")}
        assert await sync_states.load({AN: 4, BINH: 1}) == {
            AN: StoredState(4, None, None, None),
            BINH: state(2, b"c"),
        }

    asyncio.run(scenario())


def test_a_save_only_moves_a_state_forward(sync_states: SyncStates) -> None:
    async def scenario() -> None:
        await sync_states.save({AN: state(2, b"first two")})
        await sync_states.save({AN: state(1, b"older")})
        assert await sync_states.load({AN: None}) == {AN: state(2, b"first two")}
        await sync_states.save({AN: state(2, b"same version, other contents")})
        assert await sync_states.load({AN: None}) == {AN: state(2, b"first two")}
        await sync_states.save({AN: state(3, b"first two", b"then a third")})
        assert await sync_states.load({AN: None}) == {AN: state(3, b"first two", b"then a third")}

    asyncio.run(scenario())


def test_a_batch_moves_each_state_on_its_own(sync_states: SyncStates) -> None:
    async def scenario() -> None:
        await sync_states.save({AN: state(5, b"an"), BINH: state(1, b"binh")})
        # A re-delivered batch: AN's state is older than the stored one, BINH's newer.
        await sync_states.save(
            {AN: state(4, b"stale"), BINH: state(2, b"binh", b"moved"), CUONG: state(1, b"new")}
        )
        assert await sync_states.load({AN: None, BINH: None, CUONG: None}) == {
            AN: state(5, b"an"),
            BINH: state(2, b"binh", b"moved"),
            CUONG: state(1, b"new"),
        }

    asyncio.run(scenario())


def test_the_daily_count_moves_with_the_version(sync_states: SyncStates) -> None:
    counted = StoredState(2, [b"a", b"b"], ["a", "b"], b"{}", date(2026, 3, 1), 2)

    async def scenario() -> None:
        await sync_states.save({AN: counted})
        await sync_states.save({AN: StoredState(2, [b"a", b"b"], ["a", "b"], b"{}", None, 7)})
        assert await sync_states.load({AN: None}) == {AN: counted}  # a retry changes nothing
        assert await sync_states.load({AN: 2}) == {AN: StoredState(2, None)}  # caller has it

    asyncio.run(scenario())


def test_the_synchronizers_daily_cap_holds_across_a_restart(sync_states: SyncStates) -> None:
    settings = Settings()
    processing = settings.processing.model_copy(update={"citizen_events_per_day": 3})
    now = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    codec = Codec(m.RegistryEvent)
    events = [story_birth()] + [
        story_move(n, BIRTH + timedelta(days=40 * n), f"{26700 + n:05d}") for n in range(2, 7)
    ]
    batch = [
        InboundMessage("validated", 0, i, PIN.encode(), codec.encode(e))
        for i, e in enumerate(events)
    ]

    def restarted() -> SynchronizerStep:  # a fresh step: no cache, the count from the store
        return SynchronizerStep(settings.topics, processing, sync_states, lambda: now)

    async def run(step: SynchronizerStep, messages: list[InboundMessage]) -> list[int]:
        result = await step(messages)
        if result.finish is not None:
            await result.finish()
        return sorted(result.rejected)

    async def scenario() -> None:
        nonlocal now
        assert await run(restarted(), batch[:2]) == []
        assert await run(restarted(), batch[2:4]) == [1]  # the day's third passes, not the 4th
        assert await run(restarted(), batch) == [3, 4, 5]  # a replay: duplicates, then over
        now += timedelta(hours=1)  # past midnight UTC
        assert await run(restarted(), batch[3:]) == []
        stored = await sync_states.load({PIN: None})
        assert (stored[PIN].version, stored[PIN].day, stored[PIN].applied_today) == (
            6,
            date(2026, 3, 2),
            3,
        )

    asyncio.run(scenario())
