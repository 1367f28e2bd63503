"""The dead-letter limit, and the pure parts of `popsync dlq`."""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from popsync.services.synchronizer.step import SynchronizerStep
from popsync.services.validator.step import ValidatorStep

from popsync import cli
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.ops import dlq
from popsync.runtime.deadletter import (
    DEAD_LETTER_CODEC,
    KEPT_VALUE_BYTES,
    DeadLetterLimit,
    dead_letter,
)
from popsync.runtime.exits import StopWorker
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import BatchProcessor
from popsync.settings import DeadLetterLimitSettings, Settings
from popsync.topology import MAX_DEAD_LETTER_BYTES, MAX_EVENT_BYTES
from tests.builders import birth_event
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    InMemorySyncStates,
    RecordingProducer,
)
from tests.signing import dev_verifier, signed

PIN = "079203000123"
_offsets = iter(range(10**9))


def message(value: bytes | None = b"x", key: bytes | None = PIN.encode()) -> InboundMessage:
    return InboundMessage("registry-events", 0, next(_offsets), key, value)


def limit(window: int = 10, max_ratio: float = 0.5, max_consecutive: int = 5) -> DeadLetterLimit:
    settings = DeadLetterLimitSettings(
        window=window, max_ratio=max_ratio, max_consecutive=max_consecutive
    )
    return DeadLetterLimit(settings, "validator")


def outcomes(pattern: str) -> list[tuple[InboundMessage, str | None]]:
    """'.' = processed, a letter = dead-lettered with reason REASON_<letter>."""
    return [(message(), None if c == "." else f"REASON_{c}") for c in pattern]


def test_stops_at_max_consecutive_dead_letters() -> None:
    dlq_limit = limit(max_consecutive=5)
    dlq_limit.observe(outcomes("AAAA."))
    dlq_limit.observe(outcomes("AAAA"))
    assert dlq_limit.consecutive == 4
    with pytest.raises(StopWorker) as stop:
        dlq_limit.observe(outcomes("B"))
    assert stop.value.exit_code == 70
    text = str(stop.value)
    assert "5 messages in a row" in text
    assert "9 of the last 10 messages dead-lettered; top reasons: REASON_A=8, REASON_B=1" in text


def test_a_processed_message_resets_the_run() -> None:
    dlq_limit = limit(window=100, max_consecutive=3)
    dlq_limit.observe(outcomes("AA.AA.AA.AA."))
    assert dlq_limit.consecutive == 0
    assert dlq_limit.parked_in_window == 8


def test_ratio_is_judged_only_once_the_window_is_full() -> None:
    dlq_limit = limit(window=10, max_ratio=0.5, max_consecutive=100)
    dlq_limit.observe(outcomes("A.A.A.A.A"))  # 5 of 9 parked, window not full yet
    dlq_limit.observe(outcomes("."))  # 5 of 10: not more than half
    dlq_limit.observe(outcomes("A"))  # the oldest A leaves the window: still 5 of 10
    with pytest.raises(StopWorker) as stop:
        dlq_limit.observe(outcomes("A"))  # a processed one leaves: 6 of 10
    assert "6 of the last 10 messages were dead-lettered (60%, limit 50%)" in str(stop.value)


def test_the_window_slides() -> None:
    dlq_limit = limit(window=4, max_ratio=0.5, max_consecutive=100)
    dlq_limit.observe(outcomes("AA.."))  # 2 of 4
    dlq_limit.observe(outcomes("..A"))  # the two A left the window: 1 of 4
    assert dlq_limit.parked_in_window == 1
    dlq_limit.observe(outcomes("A"))  # 2 of 4
    with pytest.raises(StopWorker):
        dlq_limit.observe(outcomes("A"))  # 3 of 4


def test_a_stopped_batch_counts_nothing_and_a_retried_batch_counts_once() -> None:
    dlq_limit = limit(window=100, max_consecutive=3)
    batch = outcomes("AA")
    dlq_limit.observe(batch)
    dlq_limit.observe(batch)  # the same messages again: a retry after a broker fault
    assert (dlq_limit.parked_in_window, dlq_limit.consecutive) == (2, 2)
    with pytest.raises(StopWorker):
        dlq_limit.observe(outcomes(".AAA"))
    assert (dlq_limit.parked_in_window, dlq_limit.consecutive) == (2, 2)  # as before


def test_offsets_are_tracked_per_partition() -> None:
    dlq_limit = limit(window=100, max_consecutive=100)
    dlq_limit.observe([(InboundMessage("t", 0, 5, None, None), "R")])
    dlq_limit.observe([(InboundMessage("t", 1, 0, None, None), "R")])  # other partition
    dlq_limit.observe([(InboundMessage("t", 0, 3, None, None), "R")])  # already seen
    assert dlq_limit.parked_in_window == 2


def test_the_stop_message_holds_no_personal_data() -> None:
    dlq_limit = limit(max_consecutive=2)
    with pytest.raises(StopWorker) as stop:
        dlq_limit.observe(
            [(message(PIN.encode(), PIN.encode()), "PIN_BAD_CHECK") for _ in range(2)]
        )
    assert PIN not in str(stop.value)
    assert "POPSYNC_DEAD_LETTER_LIMIT__" in str(stop.value)


def small_limit_settings(**limit_fields: Any) -> Settings:
    return Settings(dead_letter_limit={"window": 20, "max_consecutive": 3, **limit_fields})


def test_the_validator_stops_before_sending_anything_of_the_batch() -> None:
    producer = RecordingProducer()
    now = datetime(2026, 11, 23, tzinfo=UTC)
    settings = small_limit_settings()
    step = ValidatorStep(
        settings,
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        InMemoryMatchingStore(),
        clock=lambda: now,
        verifier=dev_verifier(),
    )
    process = BatchProcessor.for_worker(settings, "validator", step, producer)
    good = Codec(m.RegistryEvent).encode(birth_event())
    asyncio.run(process([signed(message(good)), message(b"junk"), signed(message(good))]))
    assert [o.topic for o in producer.sent].count(settings.topics.validated_events) == 2
    assert len(producer.sent) == 3
    batch = [signed(message(good)), *(message(b"junk") for _ in range(3)), signed(message(good))]
    with pytest.raises(StopWorker) as stop:
        asyncio.run(process(batch))
    assert "BAD_MAGIC=" in str(stop.value)
    assert len(producer.sent) == 3  # nothing of the stopped batch


def test_the_synchronizer_stops_before_sending_anything_of_the_batch() -> None:
    producer, states = RecordingProducer(), InMemorySyncStates()
    settings = small_limit_settings()
    step = SynchronizerStep(settings.topics, settings.processing, states)
    process = BatchProcessor.for_worker(settings, "synchronizer", step, producer)
    with pytest.raises(StopWorker) as stop:
        asyncio.run(process([message(b"junk") for _ in range(3)]))
    assert "synchronizer" in str(stop.value) and "BAD_MAGIC=3" in str(stop.value)
    assert producer.sent == []
    assert states.saves == 0  # a stopping synchronizer saves nothing


def letter(**changes: Any) -> m.DeadLetter:
    fields: dict[str, Any] = {
        "original_topic": "registry-events",
        "original_partition": 1,
        "original_offset": 7,
        "stage": "validator",
        "reason_code": "OCCURRED_IN_FUTURE",
        "message": "occurred_at is in the future",
        "source_registry": "CIVIL_STATUS",
        "failed_at": datetime(2026, 11, 23, 10, tzinfo=UTC),
    }
    return m.DeadLetter(**{**fields, **changes})


def test_selection() -> None:
    at = datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert dlq.Selection().everything and dlq.Selection().matches(letter())
    assert dlq.Selection(reasons=frozenset({"OCCURRED_IN_FUTURE"})).matches(letter())
    assert not dlq.Selection(reasons=frozenset({"BAD_MAGIC"})).matches(letter())
    assert not dlq.Selection(stages=frozenset({"synchronizer"})).matches(letter())
    assert dlq.Selection(sources=frozenset({"CIVIL_STATUS"})).matches(letter())
    assert not dlq.Selection(sources=frozenset({"RESIDENCE"})).matches(letter())
    assert not dlq.Selection(sources=frozenset({"RESIDENCE"})).matches(letter(source_registry=None))
    assert dlq.Selection(since=at, until=at + timedelta(seconds=1)).matches(letter())
    assert not dlq.Selection(until=at).matches(letter())
    assert not dlq.Selection(since=at + timedelta(seconds=1)).matches(letter())
    assert dlq.Selection(retryable=True).matches(letter())  # the clock catches up
    assert not dlq.Selection(retryable=True).matches(letter(reason_code="BAD_MAGIC"))


def test_summary_counts_without_personal_data() -> None:
    letters = [
        dlq.Parked(0, 0, letter(original_key=PIN.encode(), original_value=PIN.encode())),
        dlq.Parked(0, 1, letter(reason_code="BAD_MAGIC", source_registry=None)),
        dlq.Parked(1, 0, letter(failed_at=datetime(2026, 11, 24, tzinfo=UTC))),
    ]
    out = io.StringIO()
    dlq.summarize(letters, out)
    text = out.getvalue()
    assert "failed between 2026-11-23T10:00:00Z and 2026-11-24T00:00:00Z" in text
    assert "by reason:\n  2  OCCURRED_IN_FUTURE\n  1  BAD_MAGIC\n" in text
    assert "by source registry:\n  2  CIVIL_STATUS\n  1  (unknown)\n" in text
    assert PIN not in text


def test_dead_letter_round_trip_keeps_the_original_bytes() -> None:
    original = InboundMessage("registry-events", 2, 41, PIN.encode(), b"\x00raw")
    out = dead_letter(original, topic="dlq", stage="validator", reason="BAD_MAGIC", description="")
    parked = DEAD_LETTER_CODEC.decode(out.value)
    assert (parked.original_key, parked.original_value) == (PIN.encode(), b"\x00raw")
    assert (parked.original_partition, parked.original_offset) == (2, 41)


def test_cli_parses_dlq_options_and_refuses_an_unselected_replay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = cli.build_parser().parse_args(
        [
            "dlq",
            "replay",
            "--reason",
            "occurred_in_future",
            "--reason",
            "BAD_MAGIC",
            "--source",
            "civil-status",
            "--since",
            "2026-11-23T10:00:00",
            "--dry-run",
            "--retryable",
        ]
    )
    selection = cli._dlq_selection(args)
    assert selection.reasons == {"OCCURRED_IN_FUTURE", "BAD_MAGIC"}
    assert selection.sources == {"CIVIL_STATUS"}
    assert selection.since == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert args.dry_run and selection.retryable
    assert cli.main(["dlq", "replay"]) == 2
    assert "--all" in capsys.readouterr().err


def test_an_original_too_large_to_park_whole_is_parked_in_a_small_form_that_fits() -> None:
    value = b"\xc3\x01" + b"A" * (5 * 1024 * 1024)  # compressible: it passed the broker
    key = b"K" * 100_000
    out = dead_letter(
        message(value, key),
        topic="dlq",
        stage="validator",
        reason="EVENT_TOO_LARGE",
        description="too large",
    )
    assert len(out.value or b"") + len(out.key or b"") < MAX_DEAD_LETTER_BYTES // 100
    parked = DEAD_LETTER_CODEC.decode(out.value)
    assert parked.original_truncated
    assert parked.original_value == value[:KEPT_VALUE_BYTES]
    assert parked.original_size == len(value)
    assert parked.original_sha256 == hashlib.sha256(value).hexdigest()
    headers = dict(out.headers)
    assert headers["popsync.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["popsync.original.size"] == str(len(value)).encode()
    assert headers["popsync.original.key-sha256"] == hashlib.sha256(key).hexdigest().encode()


def test_an_original_that_fits_is_parked_whole() -> None:
    value = b"\xc3\x01" + b"A" * (1024 * 1024)
    parked = DEAD_LETTER_CODEC.decode(
        dead_letter(message(value), topic="dlq", stage="v", reason="R", description="d").value
    )
    assert (parked.original_value, parked.original_truncated, parked.original_size) == (
        value,
        False,
        None,
    )


def test_the_validator_refuses_an_event_over_the_limit_unread() -> None:
    step = ValidatorStep(
        Settings(),
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        InMemoryMatchingStore(),
        verifier=dev_verifier(),
    )
    good = Codec(m.RegistryEvent).encode(birth_event())
    result = asyncio.run(step([message(good + b"\0" * MAX_EVENT_BYTES)]))
    assert result.rejected[0].reason == "EVENT_TOO_LARGE"


def test_list_names_each_truncated_letter_by_size_and_hash_and_replay_skips_it() -> None:
    truncated = letter(
        reason_code="EVENT_TOO_LARGE",
        original_value=b"first bytes",
        original_size=5_242_882,
        original_sha256="ab" * 32,
        original_truncated=True,
    )
    out = io.StringIO()
    dlq.summarize([dlq.Parked(0, 3, truncated), dlq.Parked(0, 4, letter())], out)
    text = out.getvalue()
    assert "too large to keep whole (1; first bytes kept, not replayable):" in text
    assert f"registry-events[1]@7  EVENT_TOO_LARGE  5242882 bytes  sha256 {'ab' * 32}" in text


def test_selection_by_source_names_the_registry_or_the_quarantined_source() -> None:
    civil = letter(source_province="079")
    assert dlq.Selection(sources=frozenset({"CIVIL_STATUS/79"})).matches(civil)
    assert dlq.Selection(sources=frozenset({"CIVIL_STATUS"})).matches(civil)
    assert not dlq.Selection(sources=frozenset({"CIVIL_STATUS/01"})).matches(civil)
    assert dlq.Selection(sources=frozenset({"unidentified"})).matches(letter(source_registry=None))


def test_a_dead_letter_keeps_the_original_headers_and_replay_sends_them_back() -> None:
    signed = InboundMessage(
        "registry-events", 0, 9, PIN.encode(), b"v", (("popsync.signature", b"\x01" * 64),)
    )
    letter_out = dead_letter(signed, topic="dlq", stage="v", reason="R", description="d")
    parked = DEAD_LETTER_CODEC.decode(letter_out.value)
    assert dlq.original_headers(parked) == [("popsync.signature", b"\x01" * 64)]
    flood = InboundMessage("t", 0, 10, None, b"v", (("h", b"x" * 20_000),))
    kept = DEAD_LETTER_CODEC.decode(
        dead_letter(flood, topic="dlq", stage="v", reason="R", description="d").value
    )
    assert kept.original_headers == []  # more than a genuine message has: not kept
