"""Sector records without a PIN in the validator, with in-memory fakes: linked, sent to
review or reported unmatched; re-keyed; decided once; one blocking query per batch.

The PostgreSQL store and the review commands run for real in
tests/integration/test_matching_pipeline.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from popsync.services.validator.step import ValidatorStep
from prometheus_client import REGISTRY

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.merge import Applied, CitizenState, apply_event
from popsync.domain.pin import mask_pin
from popsync.domain.rules import RuleViolation, check_event
from popsync.identity import CandidateCitizen, MatchOutcome
from popsync.identity.decisions import (
    AUTOMATIC,
    BlockingQuery,
    blocking_query,
    operator_event_id,
)
from popsync.ops import review
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import BatchProcessor
from popsync.settings import Settings
from popsync.topology import topic_specs
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    RecordingProducer,
    processing,
)
from tests.signing import dev_verifier, signed

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SETTINGS = Settings()
TOPICS = SETTINGS.topics
EVENTS = Codec(m.RegistryEvent)
REVIEWS = Codec(m.MatchReview)
UNMATCHED = Codec(m.UnmatchedRecord)

KHAI = CandidateCitizen("079191000101", "Nguyễn Thị Minh Khai", date(1991, 4, 12), "F", "79")
HUNG = CandidateCitizen("001085000102", "Trần Văn Hùng", date(1985, 9, 3), "M", "01")
HUNG_TWIN = CandidateCitizen("001085000103", "Trần Văn Hưng", date(1985, 9, 3), "M", "01")
BAO = CandidateCitizen(
    "048085000104", "Lê Quốc Bảo", date(1985, 3, 9), "M", "48", aliases=("023456789",)
)
NAMES = ("Nguy", "Khai", "Tran", "Hung", "Hưng", "Bảo", "Toàn")

_ids = itertools.count(1)
_offsets = itertools.count(0)


def record(
    full_name: str,
    birth_date: date,
    sex: m.Sex,
    *,
    pin: str | None = None,
    source: m.SourceRegistry = m.SourceRegistry.SOCIAL_INSURANCE,
    event_id: str | None = None,
    **payload: Any,
) -> m.RegistryEvent:
    moment = datetime(2024, 3, 1, 3, tzinfo=UTC)
    return m.RegistryEvent(
        event_id=event_id or f"sector-{next(_ids)}",
        event_type=m.EventType.SECTOR_RECORD_REGISTERED,
        source_registry=source,
        source_province="74",  # legacy: Bình Dương, now in TP. Hồ Chí Minh (79)
        subject_pin=pin,
        occurred_at=moment,
        recorded_at=moment + timedelta(hours=1),
        source_sequence=next(_ids),
        payload=m.SectorRecordRegistered(
            record_number=f"79{next(_ids):08d}",
            full_name=full_name,
            birth_date=birth_date,
            sex=sex,
            **payload,
        ),
    )


def typo_khai() -> m.RegistryEvent:
    # Without diacritics, one letter wrong, the birthplace by its legacy code.
    return record("Nguyen Thi Minh Khaj", date(1991, 4, 12), m.Sex.F, birthplace_province="79")


def twin_hung() -> m.RegistryEvent:
    return record("Tran Van Hung", date(1985, 9, 3), m.Sex.M, birthplace_province="01")


def stranger() -> m.RegistryEvent:
    return record("Phạm Đình Toàn", date(1972, 1, 1), m.Sex.M, birthplace_province="01")


def message(event: m.RegistryEvent, key: bytes | None = None) -> InboundMessage:
    """As the sector database publishes it: keyed by its record number (it knows no PIN)."""
    assert isinstance(event.payload, m.SectorRecordRegistered)
    if key is None:
        key = (event.subject_pin or event.payload.record_number).encode()
    value = EVENTS.encode(event)
    return signed(InboundMessage(TOPICS.registry_events, 2, next(_offsets), key, value))


def make_step(
    *citizens: CandidateCitizen, settings: Settings = SETTINGS
) -> tuple[BatchProcessor, RecordingProducer, InMemoryMatchingStore]:
    """The validator's step with these citizens known, behind the runtime's error path."""
    store = InMemoryMatchingStore(citizens or (KHAI, HUNG, HUNG_TWIN, BAO))
    step = ValidatorStep(
        settings,
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        store,
        clock=lambda: NOW,
        verifier=dev_verifier(),
    )
    process, producer = processing(step, "validator", settings)
    return process, producer, store


def run(process: BatchProcessor, *messages: InboundMessage) -> None:
    asyncio.run(process(list(messages)))


def outcomes(source: str, outcome: str) -> float:
    labels = {"source_registry": source, "outcome": outcome}
    return REGISTRY.get_sample_value("popsync_match_outcomes_total", labels) or 0.0


# ---- the three outcomes


def test_a_record_with_typos_and_no_diacritics_is_linked_and_rekeyed_by_the_pin() -> None:
    step, producer, store = make_step()
    event = typo_khai()
    before = outcomes("SOCIAL_INSURANCE", "LINKED")
    run(step, message(event))

    (out,) = producer.sent
    assert out.topic == TOPICS.validated_events
    assert out.key == KHAI.pin.encode()  # the citizen's partition from here on
    linked = EVENTS.decode(out.value)
    assert linked.subject_pin == KHAI.pin and linked.event_id == event.event_id
    assert isinstance(linked.payload, m.SectorRecordRegistered)
    assert linked.payload.full_name == "Nguyen Thi Minh Khaj"  # normalized, not "corrected"
    assert linked.source_province == "79"  # the legacy code mapped, as for every event
    decision = store.stored[event.event_id]
    assert decision.outcome is MatchOutcome.LINKED and decision.pin == KHAI.pin
    assert decision.decided_by == AUTOMATIC and decision.decided_at == NOW
    assert decision.method == "PROBABILISTIC" and decision.reason == "ABOVE_AUTO_LINK"
    assert not store.reviews
    assert outcomes("SOCIAL_INSURANCE", "LINKED") == before + 1


def test_a_record_matching_twins_equally_goes_to_review_with_the_original_bytes() -> None:
    step, producer, store = make_step()
    event = twin_hung()
    sent = message(event)
    before = outcomes("SOCIAL_INSURANCE", "REVIEW")
    run(step, sent)

    (out,) = producer.sent
    assert out.topic == TOPICS.match_reviews and out.key == event.event_id.encode()
    notice = REVIEWS.decode(out.value)
    assert (notice.review_id, notice.event_id) == (event.event_id, event.event_id)
    assert notice.source_registry is m.SourceRegistry.SOCIAL_INSURANCE
    assert notice.source_province == "79"
    assert {c.pin for c in notice.candidates} == {HUNG.pin, HUNG_TWIN.pin}
    assert notice.reason == "EXACT_AMBIGUOUS" and notice.method == "EXACT"
    assert notice.score == pytest.approx(notice.candidates[0].score)
    assert notice.created_at == NOW
    pending = store.reviews[event.event_id]
    assert (pending.original_key, pending.original_value) == (sent.key, sent.value)
    assert pending.original_topic == TOPICS.registry_events
    assert store.stored[event.event_id].outcome is MatchOutcome.REVIEW
    assert outcomes("SOCIAL_INSURANCE", "REVIEW") == before + 1


def test_a_record_nobody_resembles_is_reported_unmatched() -> None:
    step, producer, store = make_step()
    event = stranger().model_copy(update={"source_registry": m.SourceRegistry.CIVIL_SERVANT})
    before = outcomes("CIVIL_SERVANT", "UNMATCHED")
    run(step, message(event))

    (out,) = producer.sent
    assert out.topic == TOPICS.unmatched_records and out.key == event.event_id.encode()
    report = UNMATCHED.decode(out.value)
    assert isinstance(event.payload, m.SectorRecordRegistered)
    assert report.record_number == event.payload.record_number
    assert (report.reason, report.score, report.decided_by) == ("NO_CANDIDATE", 0.0, AUTOMATIC)
    assert report.review_id is None
    assert store.stored[event.event_id].outcome is MatchOutcome.UNMATCHED
    assert outcomes("CIVIL_SERVANT", "UNMATCHED") == before + 1


def test_thresholds_come_from_settings() -> None:
    strict = Settings(matching={"auto_link": 60.0, "review": 9.0, "margin": 8.0})
    step, producer, _ = make_step(settings=strict)
    run(step, message(typo_khai()))
    (out,) = producer.sent
    assert out.topic == TOPICS.match_reviews  # the same record, not linked any more


# ---- decided once


def test_a_redelivered_record_gets_its_stored_decision_not_a_new_match() -> None:
    step, producer, store = make_step()
    linked, twins, lost = typo_khai(), twin_hung(), stranger()
    first = [message(linked), message(twins), message(lost)]
    run(step, *first)
    assert len(store.queries) == 1
    store.citizens.clear()  # whatever the store holds now, the answer stays
    again = [
        InboundMessage(m_.topic, m_.partition, m_.offset, m_.key, m_.value, m_.headers)
        for m_ in first
    ]
    run(step, *again)

    assert len(store.queries) == 1  # nothing matched again
    assert [(o.topic, o.key, o.value) for o in producer.sent[3:]] == [
        (o.topic, o.key, o.value) for o in producer.sent[:3]
    ]
    assert len(store.reviews) == 1


def test_a_record_sent_twice_in_one_batch_is_matched_once() -> None:
    step, producer, store = make_step()
    event = typo_khai()
    run(step, message(event), message(event))
    assert len(store.queries) == 1 and len(store.stored) == 1
    assert [o.key for o in producer.sent] == [KHAI.pin.encode()] * 2


def test_one_blocking_query_per_batch_by_birth_date_its_swap_and_legacy_id() -> None:
    step, _, store = make_step()
    cmnd = record(
        "Le Quoc Bao", date(1985, 9, 3), m.Sex.M, birthplace_province="48", legacy_id="023456789"
    )
    run(step, message(typo_khai()), message(twin_hung()), message(stranger()), message(cmnd))

    assert store.queries == [
        BlockingQuery(
            birth_dates=frozenset(
                {
                    date(1991, 4, 12),
                    date(1991, 12, 4),  # day and month swapped
                    date(1985, 9, 3),
                    date(1985, 3, 9),
                    date(1972, 1, 1),  # 1/1: no other order
                }
            ),
            legacy_ids=frozenset({"023456789"}),
        )
    ]
    # Born on the swapped date, and holding the CMND: found by the alias pass.
    decision = store.stored[cmnd.event_id]
    assert (decision.outcome, decision.pin, decision.reason) == (
        MatchOutcome.LINKED,
        BAO.pin,
        "ALIAS",
    )


def test_blocking_query_skips_impossible_swaps() -> None:
    query = blocking_query([(date(1990, 1, 25), None), (date(1990, 2, 2), "")])
    assert query.birth_dates == {date(1990, 1, 25), date(1990, 2, 2)}
    assert query.legacy_ids == frozenset()


def test_a_batch_without_such_records_queries_nothing() -> None:
    step, producer, store = make_step()
    with_pin = record("Nguyễn Thị Minh Khai", date(1991, 4, 12), m.Sex.F, pin=KHAI.pin)
    run(step, message(with_pin))
    assert store.queries == [] and store.stored == {}
    (out,) = producer.sent
    assert out.topic == TOPICS.validated_events and out.key == KHAI.pin.encode()


# ---- one output per input, in order


def test_a_mixed_batch_gives_one_output_per_input_in_order() -> None:
    step, producer, _ = make_step()
    good = record("Nguyễn Thị Minh Khai", date(1991, 4, 12), m.Sex.F, pin=KHAI.pin)
    bad = record("Trần Văn 7", date(1985, 9, 3), m.Sex.M)  # digits in the name
    batch = [
        message(typo_khai()),
        message(good),
        message(twin_hung()),
        message(bad),
        message(stranger()),
    ]
    run(step, *batch)
    # The outputs in input order, then the dead letters (the runtime makes them).
    assert [o.topic for o in producer.sent] == [
        TOPICS.validated_events,
        TOPICS.validated_events,
        TOPICS.match_reviews,
        TOPICS.unmatched_records,
        TOPICS.dead_letters,
    ]


def test_a_matching_bug_parks_only_that_record(monkeypatch: pytest.MonkeyPatch) -> None:
    from popsync.identity import sector_matching

    real = sector_matching.match

    def sometimes_broken(rec: Any, index: Any, thresholds: Any) -> Any:
        if rec.full_name.startswith("Tran"):
            raise ZeroDivisionError("bug")
        return real(rec, index, thresholds)

    monkeypatch.setattr(sector_matching, "match", sometimes_broken)
    step, producer, store = make_step()
    twins = twin_hung()
    run(step, message(typo_khai()), message(twins))
    assert [o.topic for o in producer.sent] == [TOPICS.validated_events, TOPICS.dead_letters]
    assert ("popsync.reason", b"INTERNAL_ERROR") in producer.sent[1].headers
    assert twins.event_id not in store.stored  # decided when replayed after the fix


# ---- the contract's rules for sector records


def test_sector_records_come_from_the_two_sector_registries_only() -> None:
    for source in (m.SourceRegistry.SOCIAL_INSURANCE, m.SourceRegistry.CIVIL_SERVANT):
        event = record("Lê Văn Tám", date(1980, 5, 6), m.Sex.M, pin="001080000001", source=source)
        check_event(event, b"001080000001", NOW, timedelta(0))
    wrong = record("Lê Văn Tám", date(1980, 5, 6), m.Sex.M, source=m.SourceRegistry.ID_CARD)
    with pytest.raises(RuleViolation) as info:
        check_event(wrong, b"x", NOW, timedelta(0))
    assert info.value.reason == "SOURCE_NOT_AUTHORITATIVE"


def test_a_record_without_pin_is_normalized_and_may_have_any_key() -> None:
    event = record(
        "  nGUYỄN  thị ÁNH ",
        date(1999, 1, 2),
        m.Sex.F,
        birthplace_province="74",
        hometown_province="49",
    )
    for key in (None, b"", b"7900000001"):
        checked = check_event(event, key, NOW, timedelta(0))
        assert checked.subject_pin is None
        assert isinstance(checked.payload, m.SectorRecordRegistered)
        assert checked.payload.full_name == "Nguyễn Thị Ánh"
        assert checked.payload.birthplace_province == "79"  # Bình Dương -> TP. Hồ Chí Minh
        assert checked.payload.hometown_province == "48"  # Quảng Nam -> TP. Đà Nẵng


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"legacy_id": "12345678"}, "LEGACY_ID_MALFORMED"),
        ({"hometown_province": "99"}, "HOMETOWN_PROVINCE_UNKNOWN"),
        ({"birthplace_province": "099"}, "BIRTHPLACE_PROVINCE_UNKNOWN"),
        ({"birth_date": date(1899, 12, 31)}, "DATE_TOO_EARLY"),
        ({"birth_date": date(2027, 1, 1)}, "DATE_IN_FUTURE"),
        ({"record_number": " "}, "FIELD_EMPTY"),
    ],
)
def test_invalid_sector_records_are_refused(changes: dict[str, Any], reason: str) -> None:
    event = record("Lê Văn Tám", date(1980, 5, 6), m.Sex.M)
    spoilt = event.model_copy(update={"payload": event.payload.model_copy(update=changes)})
    with pytest.raises(RuleViolation) as info:
        check_event(spoilt, None, NOW, timedelta(0))
    assert info.value.reason == reason


def test_an_operator_linked_record_passes_like_any_event_with_a_pin() -> None:
    step, producer, store = make_step()
    # Its birth date is not checked against the PIN: sector data may be wrong there.
    original = record("Tran Van Hung", date(1985, 3, 9), m.Sex.M)
    linked = original.model_copy(
        update={
            "event_id": operator_event_id(original.event_id),
            "subject_pin": HUNG.pin,
            "correlation_id": original.event_id,
        }
    )
    run(step, message(linked))
    (out,) = producer.sent
    assert out.topic == TOPICS.validated_events and out.key == HUNG.pin.encode()
    assert store.queries == []


def test_operator_event_ids_are_deterministic_uuids() -> None:
    assert operator_event_id("review-1") == operator_event_id("review-1")
    assert operator_event_id("review-1") != operator_event_id("review-2")
    assert re.fullmatch(r"[0-9a-f-]{36}", operator_event_id("review-1"))


def test_a_linked_record_joins_the_citizens_events_without_changing_a_field() -> None:
    birth = m.RegistryEvent(
        event_id="birth-1",
        event_type=m.EventType.BIRTH_REGISTERED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        source_province="79",
        subject_pin=KHAI.pin,
        occurred_at=datetime(1991, 4, 12, 3, tzinfo=UTC),
        recorded_at=datetime(1991, 4, 12, 5, tzinfo=UTC),
        source_sequence=1,
        payload=m.BirthRegistered(
            full_name=KHAI.full_name,
            birth_date=KHAI.birth_date,
            sex=m.Sex.F,
            birthplace_province="79",
            registration_number="KS-1",
        ),
    )
    born = apply_event(CitizenState(pin=KHAI.pin), birth)
    assert isinstance(born, Applied)
    sector = typo_khai().model_copy(update={"subject_pin": KHAI.pin})
    joined = apply_event(born.state, sector)
    assert isinstance(joined, Applied)
    assert joined.version == 2 and joined.changed_fields == ()
    assert joined.snapshot == born.snapshot and not joined.new_conflicts


# ---- configuration and the review commands' output


def test_the_new_topics_are_provisioned() -> None:
    names = {spec.name for spec in topic_specs(SETTINGS)}
    assert {TOPICS.match_reviews, TOPICS.unmatched_records} <= names


def test_thresholds_are_a_settings_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POPSYNC_MATCHING__AUTO_LINK", "25.5")
    monkeypatch.setenv("POPSYNC_MATCHING__REVIEW", "11")
    assert (Settings().matching.auto_link, Settings().matching.review) == (25.5, 11.0)
    monkeypatch.setenv("POPSYNC_MATCHING__REVIEW", "30")  # above auto_link: refused
    with pytest.raises(ValueError):
        Settings()


def test_review_list_masks_pins_and_shows_no_names() -> None:
    pending = [
        review.PendingReview(
            "3c2e5c9a-7f1d-4b2e-9a6c-1f2e3d4c5b6a",
            "SOCIAL_INSURANCE",
            NOW - timedelta(hours=2, minutes=5),
            26.17,
            ((HUNG.pin, 26.17), (HUNG_TWIN.pin, 26.17)),
        )
    ]
    text = "\n".join(review.format_reviews(pending, NOW))
    assert "3c2e5c9a-7f1d-4b2e-9a6c-1f2e3d4c5b6a" in text and "SOCIAL_INSURANCE" in text
    assert "2h 5m" in text and "26.2" in text
    assert mask_pin(HUNG.pin) in text and mask_pin(HUNG_TWIN.pin) in text
    assert not re.search(r"[0-9]{12}", text)
    assert not any(name in text for name in NAMES)
    assert review.format_reviews([], NOW) == ["no pending reviews"]


def test_review_resolve_refuses_a_bad_pin_or_no_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USER", raising=False)
    monkeypatch.delenv("LOGNAME", raising=False)
    with pytest.raises(review.ReviewError, match="--operator"):
        review.operator_name(None)
    assert review.operator_name(" alice ") == "alice"
    with pytest.raises(review.ReviewError):
        review.operator_name("eve\x1b[2J")
    for bad in ("07919100010", "079191000101 ", "099191000101"):
        with pytest.raises(review.ReviewError, match="not a valid PIN"):
            review.resolve(SETTINGS, "r", link=bad, operator="alice")
