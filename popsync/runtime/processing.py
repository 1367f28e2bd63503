"""The one error path of every worker: a step says what happened, the runtime does the rest.

A step takes a batch and returns a `StepResult`: the outputs to send, which messages it
rejected and why, and what to do once the outputs are durable (`finish`: save state,
write rows, count). `BatchProcessor` then, for every worker alike:
1. turns each rejection into a dead letter (original bytes, reason headers);
2. applies the dead-letter limit (`DeadLetterLimit`) before anything of the batch is
   sent: per publishing source where the step names them (`StepResult.sources`), so a
   source that crosses it is quarantined (`SourceGuard`) and the others flow on; a
   worker stopped by it has sent nothing of that batch;
3. sends the outputs and dead letters, waits until the broker has them, stores the
   quarantines decided, runs `finish`;
4. counts the batch in the metrics, once it is durable.
An infrastructure fault anywhere in that is retried with backoff (`RetryPolicy`); every
step of it is idempotent, so a retry repeats work but changes nothing twice. Any other
exception is a bug or a record no rule foresaw: the batch is split in halves until the
one message at fault is found, that message is parked as INTERNAL_ERROR (the exception's
type, no personal data) and the rest flow on. Parked messages count towards the limit
(of their source), so a bug that hits every message still stops the worker.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from popsync.contract import models as m
from popsync.runtime import metrics
from popsync.runtime.deadletter import DeadLetterLimit, dead_letter
from popsync.runtime.exits import StopWorker
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.runtime.ports import Producer
from popsync.runtime.quarantine import SourceGuard
from popsync.runtime.retry import RetryPolicy
from popsync.runtime.sources import source_of_message
from popsync.settings import Settings, WorkerName

log = logging.getLogger(__name__)

INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True)
class Rejected:
    """Why a step could not process one message; `description` holds no personal data."""

    reason: str
    description: str
    event: m.RegistryEvent | None = None  # when decoded: its id and source go with it


@dataclass
class StepResult:
    """What a step made of a batch; nothing of it is sent or stored yet."""

    outputs: list[OutboundMessage] = field(default_factory=list)
    rejected: dict[int, Rejected] = field(default_factory=dict)  # by position in the batch
    # The publishing source of each message of the batch, in order (`popsync.runtime.
    # sources`): the dead-letter limit is judged per source. None: the worker's input is
    # popsync's own output, judged as one (a failure there is a deployment's, not a source's).
    sources: list[str] | None = None
    # Runs once the outputs and dead letters are durable; must be idempotent.
    finish: Callable[[], Awaitable[None]] | None = None


class Step(Protocol):
    """A worker's own logic: one batch in, a `StepResult` out."""

    async def __call__(self, batch: Sequence[InboundMessage]) -> StepResult: ...


class BatchProcessor:
    """Makes one batch durable through a step, by the error policy in the module doc."""

    def __init__(
        self,
        step: Step,
        *,
        stage: str,
        producer: Producer,
        dead_letter_topic: str,
        limit: DeadLetterLimit,
        retry: RetryPolicy,
        guard: SourceGuard | None = None,
    ) -> None:
        self._step = step
        self._guard = guard
        self._stage = stage
        self._producer = producer
        self._dead_letter_topic = dead_letter_topic
        self._limit = limit
        self._retry = retry

    @classmethod
    def for_worker(
        cls,
        settings: Settings,
        worker: WorkerName,
        step: Step,
        producer: Producer,
        guard: SourceGuard | None = None,
    ) -> BatchProcessor:
        """The processor of one worker's step, as every worker has it: its name as the
        stage, the dead-letter topic, limit and retry policy from settings; with a
        `guard`, the limit is judged per source."""
        return cls(
            step,
            stage=worker,
            producer=producer,
            dead_letter_topic=settings.topics.dead_letters,
            limit=DeadLetterLimit(settings.dead_letter_limit, worker, guard),
            retry=RetryPolicy(settings.processing, worker),
            guard=guard,
        )

    async def __call__(self, batch: Sequence[InboundMessage]) -> None:
        """Return once the batch is durable; raises only `StopWorker` or a cancellation."""
        if not batch:
            return
        try:
            await self._retry.call(lambda: self._attempt(batch), self._stage)
        except StopWorker:
            raise
        except Exception as exc:
            if len(batch) == 1:
                await self._park(batch[0], exc)
                return
            middle = len(batch) // 2  # halves keep each partition's order
            log.warning(
                "%s: %s in a batch of %d; splitting it to find the message at fault",
                self._stage,
                type(exc).__name__,
                len(batch),
            )
            await self(batch[:middle])
            await self(batch[middle:])

    async def _attempt(self, batch: Sequence[InboundMessage]) -> None:
        started = time.perf_counter()
        if self._guard is not None:
            await self._guard.refresh()
        result = await self._step(batch)
        await self._deliver(batch, result)
        if result.finish is not None:
            await result.finish()
        topic = batch[0].topic
        metrics.EVENTS_CONSUMED.labels(self._stage, topic).inc(len(batch))
        metrics.BATCH_SIZE.labels(self._stage).observe(len(batch))
        metrics.BATCH_SECONDS.labels(self._stage).observe(time.perf_counter() - started)

    async def _deliver(self, batch: Sequence[InboundMessage], result: StepResult) -> None:
        """Dead-letter the rejected, apply the limit, then send everything and wait for it."""
        rejected = result.rejected
        sources = result.sources
        letters = [
            self._letter(batch[i], why, sources[i] if sources else None)
            for i, why in sorted(rejected.items())
        ]
        self._limit.observe(_outcomes(batch, rejected), sources=result.sources)
        await self._producer.send_all([*result.outputs, *letters])
        if self._guard is not None:  # only once its letters are out: a retry decides again
            await self._guard.flush()
        for why in rejected.values():  # counted once delivered: a retry counts nothing twice
            metrics.EVENTS_DEAD_LETTERED.labels(self._stage, why.reason).inc()

    def _letter(
        self, message: InboundMessage, why: Rejected, source: str | None = None
    ) -> OutboundMessage:
        return dead_letter(
            message,
            topic=self._dead_letter_topic,
            stage=self._stage,
            reason=why.reason,
            description=why.description,
            event=why.event,
            source=source,
        )

    async def _park(self, message: InboundMessage, exc: Exception) -> None:
        """Dead-letter the one message a bug failed on; its exception type says which bug."""
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        # The traceback without the exception's text, which may quote personal data.
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "%s: parked %s as %s (%s)\n%s",
            self._stage,
            where,
            INTERNAL_ERROR,
            type(exc).__name__,
            frames,
        )
        source = source_of_message(message) if self._guard is not None else None
        letter = self._letter(
            message, Rejected(INTERNAL_ERROR, f"{type(exc).__name__} in {self._stage}"), source
        )
        # Counted even if the message was counted as processed before a later part of its
        # batch failed: a bug that parks everything must still trip the limit.
        sources = [source] if source is not None else None
        self._limit.observe([(message, INTERNAL_ERROR)], sources=sources, recount=True)

        async def send() -> None:
            await self._producer.send_all([letter])
            if self._guard is not None:
                await self._guard.flush()

        try:
            await self._retry.call(send, self._stage)
        except Exception as failed:  # not even its dead letter goes out: stop, lose nothing
            raise StopWorker(
                f"{self._stage}: could not park {where} ({type(failed).__name__}); "
                "nothing of this batch was committed"
            ) from failed
        metrics.EVENTS_DEAD_LETTERED.labels(self._stage, INTERNAL_ERROR).inc()


def _outcomes(
    batch: Sequence[InboundMessage], rejected: Mapping[int, Rejected]
) -> Iterable[tuple[InboundMessage, str | None]]:
    for i, message in enumerate(batch):
        why = rejected.get(i)
        yield message, why.reason if why else None
