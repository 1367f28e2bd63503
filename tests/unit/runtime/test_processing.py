"""The one error path every worker shares: rejections, the limit, retries, bugs parked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from popsync.contract.codec import Codec
from popsync.contract.models import DeadLetter
from popsync.runtime.deadletter import DeadLetterLimit
from popsync.runtime.exits import StopWorker
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.runtime.processing import INTERNAL_ERROR, BatchProcessor, Rejected, StepResult
from popsync.runtime.retry import RetryPolicy
from popsync.settings import DeadLetterLimitSettings, ProcessingSettings
from tests.fakes import RecordingProducer

DLQ = "dlq"
LETTERS = Codec(DeadLetter)
FAST = ProcessingSettings(retry_initial_seconds=0.001, retry_max_seconds=0.004)
PERSONAL_DATA = "079123456789 Nguyễn Văn An"  # what an exception's text may quote


def messages(count: int, topic: str = "in") -> list[InboundMessage]:
    return [InboundMessage(topic, 0, i, f"k{i}".encode(), f"v{i}".encode()) for i in range(count)]


class EchoStep:
    """Outputs each value on topic "out"; rejects values listed in `reject`, raises a bug
    on values in `bugs` (in the step or, with `bug_in_finish`, in its finish), and records
    what its finish was given, in order."""

    def __init__(
        self,
        reject: frozenset[bytes] = frozenset(),
        bugs: frozenset[bytes] = frozenset(),
        bug_in_finish: bool = False,
    ) -> None:
        self.reject, self.bugs, self.bug_in_finish = reject, bugs, bug_in_finish
        self.finished: list[bytes] = []
        self.calls = 0

    async def __call__(self, batch: Sequence[InboundMessage]) -> StepResult:
        self.calls += 1
        values = [m.value or b"" for m in batch]
        if not self.bug_in_finish and self.bugs.intersection(values):
            raise ValueError(PERSONAL_DATA)
        result = StepResult()
        for i, value in enumerate(values):
            if value in self.reject:
                result.rejected[i] = Rejected("BAD_VALUE", "value refused")
            else:
                result.outputs.append(OutboundMessage("out", None, value))

        async def finish() -> None:
            if self.bug_in_finish and self.bugs.intersection(values):
                raise KeyError(PERSONAL_DATA)
            self.finished.extend(v for i, v in enumerate(values) if i not in result.rejected)

        result.finish = finish
        return result


def processor(
    step: EchoStep, producer: RecordingProducer, *, consecutive: int = 200, window: int = 1000
) -> BatchProcessor:
    limit = DeadLetterLimit(
        DeadLetterLimitSettings(window=window, max_ratio=1.0, max_consecutive=consecutive),
        "unit",
    )
    return BatchProcessor(
        step,
        stage="unit",
        producer=producer,
        dead_letter_topic=DLQ,
        limit=limit,
        retry=RetryPolicy(FAST, "unit-processing"),
    )


def sent_to(producer: RecordingProducer, topic: str) -> list[OutboundMessage]:
    return [m for m in producer.sent if m.topic == topic]


def letters(producer: RecordingProducer) -> list[DeadLetter]:
    return [LETTERS.decode(m.value) for m in sent_to(producer, DLQ)]


def test_rejections_become_dead_letters_with_the_original_bytes_and_the_reason() -> None:
    producer, step = RecordingProducer(), EchoStep(reject=frozenset({b"v1"}))
    asyncio.run(processor(step, producer)(messages(3)))
    assert [m.value for m in sent_to(producer, "out")] == [b"v0", b"v2"]
    (letter,) = letters(producer)
    assert (letter.original_value, letter.original_key) == (b"v1", b"k1")
    assert (letter.reason_code, letter.stage, letter.original_offset) == ("BAD_VALUE", "unit", 1)
    headers = dict(sent_to(producer, DLQ)[0].headers)
    assert headers["popsync.reason"] == b"BAD_VALUE"
    assert step.finished == [b"v0", b"v2"]  # finish ran, after the send


def test_the_limit_stops_the_worker_before_anything_of_the_batch_is_sent() -> None:
    producer = RecordingProducer()
    step = EchoStep(reject=frozenset({b"v0", b"v1", b"v2"}))
    with pytest.raises(StopWorker):
        asyncio.run(processor(step, producer, consecutive=3)(messages(4)))
    assert producer.sent == [] and step.finished == []


def test_an_infrastructure_fault_is_retried_and_nothing_is_lost() -> None:
    producer, step = RecordingProducer(), EchoStep(reject=frozenset({b"v1"}))
    producer.fail_next(3)  # the broker is away for three attempts
    asyncio.run(processor(step, producer)(messages(3)))
    assert step.calls == 4
    assert [m.value for m in sent_to(producer, "out")] == [b"v0", b"v2"]
    assert [letter.original_value for letter in letters(producer)] == [b"v1"]


@pytest.mark.parametrize("in_finish", [False, True], ids=["in-step", "in-finish"])
def test_a_bug_parks_only_the_message_at_fault_and_the_others_flow(
    in_finish: bool, caplog: pytest.LogCaptureFixture
) -> None:
    producer = RecordingProducer()
    step = EchoStep(bugs=frozenset({b"v5"}), bug_in_finish=in_finish)
    with caplog.at_level(logging.INFO):
        asyncio.run(processor(step, producer)(messages(8)))
    (letter,) = letters(producer)
    assert letter.original_value == b"v5" and letter.reason_code == INTERNAL_ERROR
    expected = "KeyError" if in_finish else "ValueError"
    assert letter.message == f"{expected} in unit"  # the type, never the text
    assert sorted(step.finished) == [b"v0", b"v1", b"v2", b"v3", b"v4", b"v6", b"v7"]
    assert PERSONAL_DATA not in caplog.text and PERSONAL_DATA not in letter.message


def test_a_bug_on_every_message_trips_the_limit() -> None:
    producer = RecordingProducer()
    step = EchoStep(bugs=frozenset(m.value or b"" for m in messages(6)))
    with pytest.raises(StopWorker):
        asyncio.run(processor(step, producer, consecutive=4)(messages(6)))
    assert len(letters(producer)) == 3  # the fourth in a row stopped it, unsent


def test_a_bug_found_after_the_batch_was_counted_still_counts_towards_the_limit() -> None:
    producer = RecordingProducer()
    step = EchoStep(bugs=frozenset(m.value or b"" for m in messages(4)), bug_in_finish=True)
    with pytest.raises(StopWorker):
        asyncio.run(processor(step, producer, consecutive=4)(messages(4)))


def test_a_message_that_cannot_even_be_parked_stops_the_worker() -> None:
    producer, step = RecordingProducer(), EchoStep(bugs=frozenset({b"v0"}))
    producer.fail_next(1, ValueError("refused"))  # not an infrastructure fault
    with pytest.raises(StopWorker):
        asyncio.run(processor(step, producer)(messages(1)))
