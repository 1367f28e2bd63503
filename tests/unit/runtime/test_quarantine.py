"""Blast radius per source: the limit judged per publishing source, quarantine, release."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime

import pytest
from popsync.services.validator.step import ValidatorStep

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.publishers import dev_publisher_id
from popsync.runtime.deadletter import DEAD_LETTER_CODEC, DeadLetterLimit
from popsync.runtime.exits import StopWorker
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import BatchProcessor
from popsync.runtime.quarantine import Quarantine, SourceGuard
from popsync.runtime.sources import UNIDENTIFIED, UNVERIFIED, source_of_message
from popsync.settings import DeadLetterLimitSettings, Settings
from tests.builders import PIN, birth_event, story_move
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    InMemoryQuarantineStore,
    RecordingProducer,
)
from tests.signing import dev_verifier, signed

EVENTS = Codec(m.RegistryEvent)
NOW = datetime(2026, 11, 23, tzinfo=UTC)
_offsets = itertools.count()


def message(value: bytes = b"x", key: bytes = PIN.encode()) -> InboundMessage:
    return InboundMessage("in", 0, next(_offsets), key, value)


def guarded(
    store: InMemoryQuarantineStore | None = None, **fields: float
) -> tuple[DeadLetterLimit, SourceGuard, InMemoryQuarantineStore]:
    store = store or InMemoryQuarantineStore()
    settings = DeadLetterLimitSettings(
        **{"window": 20, "max_consecutive": 5, "bad_deploy_sources": 3, **fields}
    )
    guard = SourceGuard(store, refresh_seconds=60)
    return DeadLetterLimit(settings, "validator", guard), guard, store


def batch(pattern: str) -> tuple[list[tuple[InboundMessage, str | None]], list[str]]:
    """'a' = a bad message of source A, 'A' a good one; likewise for other letters."""
    outcomes = [(message(), None if c.isupper() else "BAD_MAGIC") for c in pattern]
    return outcomes, [f"SRC/{c.upper()}" for c in pattern]


def see(limit: DeadLetterLimit, pattern: str) -> None:
    outcomes, sources = batch(pattern)
    limit.observe(outcomes, sources=sources)


def test_a_source_crossing_the_limit_is_quarantined_and_the_others_flow() -> None:
    limit, guard, store = guarded()
    outcomes, sources = batch("aB" * 20)  # A: 20 bad in a row (limit 5), interleaved with B
    limit.observe(outcomes, sources=sources)  # no StopWorker
    assert guard.is_quarantined("SRC/A") and not guard.is_quarantined("SRC/B")
    asyncio.run(guard.flush())
    decision = store.decisions["SRC/A"]
    assert (decision.stage, decision.reason) == ("validator", "BAD_MAGIC")
    assert "5 messages in a row" in decision.detail


def test_the_ratio_is_judged_per_source_once_its_window_is_full() -> None:
    limit, guard, _ = guarded(window=10, max_ratio=0.5, max_consecutive=100)
    see(limit, "aAaAaAaAaB")  # A: 5 of 9, window not full
    assert not guard.is_quarantined("SRC/A")
    see(limit, "a")  # 6 of 10
    assert guard.is_quarantined("SRC/A")


def test_containment_parks_are_not_counted() -> None:
    limit, guard, _ = guarded()
    outcomes = [(message(), "SOURCE_QUARANTINED") for _ in range(50)]
    outcomes += [(message(), "CITIZEN_DAILY_LIMIT") for _ in range(50)]
    limit.observe(outcomes, sources=["SRC/A"] * 100)
    assert not guard.is_quarantined("SRC/A")


def test_many_sources_failing_alike_stop_the_worker_and_quarantine_none_of_that_batch() -> None:
    limit, guard, _ = guarded()
    see(limit, "aaaaa")  # one source: quarantined
    see(limit, "bbbbb")  # two
    with pytest.raises(StopWorker) as stop:
        see(limit, "ccccc")  # three for the same reason: a bad deployment
    text = str(stop.value)
    assert "3 sources crossed it for the same reason (BAD_MAGIC)" in text
    assert "SRC/A, SRC/B, SRC/C" in text
    assert not guard.is_quarantined("SRC/C")  # nothing of the stopped batch counted


def test_sources_failing_for_different_reasons_do_not_stop_the_worker() -> None:
    limit, guard, _ = guarded()
    for source, reason in (("SRC/A", "R1"), ("SRC/B", "R2"), ("SRC/C", "R3")):
        limit.observe([(message(), reason) for _ in range(5)], sources=[source] * 5)
    assert all(guard.is_quarantined(s) for s in ("SRC/A", "SRC/B", "SRC/C"))


def test_crossings_further_apart_than_a_window_do_not_add_up() -> None:
    limit, guard, _ = guarded(window=20)
    see(limit, "aaaaa")
    see(limit, "bbbbb")
    see(limit, "D" * 20)  # a window of good messages between
    see(limit, "ccccc")  # not three within one window: no stop
    assert guard.is_quarantined("SRC/C")


def test_a_retried_batch_counts_once() -> None:
    limit, guard, _ = guarded()
    outcomes, sources = batch("aaaa")
    limit.observe(outcomes, sources=sources)
    limit.observe(outcomes, sources=sources)  # the same offsets: a retry
    assert not guard.is_quarantined("SRC/A")


def test_a_release_takes_effect_at_the_next_refresh_and_the_source_starts_afresh() -> None:
    clock = [0.0]
    store = InMemoryQuarantineStore()
    settings = DeadLetterLimitSettings(window=20, max_consecutive=5)
    guard = SourceGuard(store, refresh_seconds=5, clock=lambda: clock[0])
    limit = DeadLetterLimit(settings, "validator", guard)
    see(limit, "aaaaa")
    asyncio.run(guard.flush())
    store.release("SRC/A")
    clock[0] = 4.0
    asyncio.run(guard.refresh())  # first read
    assert not guard.is_quarantined("SRC/A")
    reads = store.reads
    asyncio.run(guard.refresh())  # within refresh_seconds: not read again
    assert store.reads == reads
    see(limit, "aaaa")  # a fresh window: 4 in a row, not 9
    assert not guard.is_quarantined("SRC/A")
    see(limit, "a")
    assert guard.is_quarantined("SRC/A")


def test_a_quarantined_source_is_parked_whole_by_the_validator_and_others_pass() -> None:
    store = InMemoryQuarantineStore()
    settings = Settings(dead_letter_limit={"window": 20, "max_consecutive": 5})
    guard = SourceGuard(store, refresh_seconds=0.001)
    aliases = InMemoryAliasDirectory()
    step = ValidatorStep(
        settings,
        InMemoryPinAllocator(),
        aliases,
        InMemoryMatchingStore(),
        clock=lambda: NOW,
        guard=guard,
        verifier=dev_verifier(),
    )
    producer = RecordingProducer()
    process = BatchProcessor.for_worker(settings, "validator", step, producer, guard)
    # The source a message is judged by is its verified publisher, whatever province the
    # event declares; an event nobody verifiably signed counts as `unverified`.
    quarantined_source = dev_publisher_id(m.SourceRegistry.CIVIL_STATUS)
    asyncio.run(store.quarantine([Quarantine(quarantined_source, "validator", "R", "test")]))
    births = [birth_event(source_province="79"), birth_event(source_province="01")]
    other_publisher = story_move(2, date(2010, 1, 1), "26734")  # signed by dev-residence
    batch_ = [
        *(signed(message(EVENTS.encode(b))) for b in births),
        signed(message(EVENTS.encode(other_publisher))),
        message(EVENTS.encode(births[0])),  # in its name, unsigned: not its publisher's
        message(b"junk"),
    ]
    sources = asyncio.run(step(batch_)).sources
    assert sources == [
        quarantined_source,
        quarantined_source,
        dev_publisher_id(m.SourceRegistry.RESIDENCE),
        UNVERIFIED,
        UNIDENTIFIED,
    ]
    asyncio.run(process(batch_))
    dead_letters = settings.topics.dead_letters
    letters = [DEAD_LETTER_CODEC.decode(o.value) for o in producer.sent if o.topic == dead_letters]
    assert [(x.reason_code, x.original_value) for x in letters] == [
        ("SOURCE_QUARANTINED", batch_[0].value),
        ("SOURCE_QUARANTINED", batch_[1].value),
        ("UNSIGNED", batch_[3].value),
        ("BAD_MAGIC", b"junk"),
    ]
    assert quarantined_source in letters[0].message
    validated = [o for o in producer.sent if o.topic == settings.topics.validated_events]
    assert [o.value for o in validated] == [batch_[2].value]


def test_a_parked_message_counts_for_its_verified_publisher_and_a_claim_for_nothing() -> None:
    event = EVENTS.encode(birth_event())
    assert source_of_message(message(b"junk")) == UNIDENTIFIED
    assert source_of_message(message(event)) == UNVERIFIED  # signed or not: not checked here
    validated = InboundMessage(
        "validated", 0, 1, PIN.encode(), event, (("popsync.verified.publisher", b"dev-x"),)
    )
    assert source_of_message(validated) == "dev-x"
