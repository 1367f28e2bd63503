"""Validator: decode, check the contract and the domain rules, normalize, route.

Every input message leaves exactly one output: the normalized event on the
validated topic, or a dead letter with its original bytes and the reason.
An unexpected exception while checking one event dead-letters that event
(reason INTERNAL_ERROR) instead of skipping it or stopping the partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from popsync import metrics
from popsync.adapters.kafka import BatchProducer, OutboundMessage
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.deadletter import DeadLetterLimit, dead_letter
from popsync.domain.rules import RuleViolation, check_event
from popsync.runtime import InboundMessage, Worker, make_app, register_batch_agent
from popsync.settings import Settings

log = logging.getLogger(__name__)
STAGE = "validator"
EVENT_CODEC = Codec(m.RegistryEvent)


@dataclass(frozen=True)
class Routed:
    output: OutboundMessage
    reason: str | None  # None: validated
    event: m.RegistryEvent | None


class ValidatorStep:
    def __init__(
        self,
        settings: Settings,
        producer: BatchProducer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._topics = settings.topics
        self._skew = timedelta(seconds=settings.processing.future_skew_seconds)
        self._producer = producer
        self._clock = clock
        self._limit = DeadLetterLimit(settings.dead_letter_limit, STAGE)

    def route(self, message: InboundMessage, now: datetime) -> Routed:
        """The one output for one input message."""
        event: m.RegistryEvent | None = None
        try:
            event = EVENT_CODEC.decode(message.value)
            normalized = check_event(event, message.key, now, self._skew)
        except (DecodeError, RuleViolation) as exc:
            return self._reject(message, exc.reason, str(exc), event)
        except Exception as exc:  # a bug must park the event, not lose it
            log.exception(
                "validator: unexpected error at %s[%d]@%d",
                message.topic,
                message.partition,
                message.offset,
            )
            return self._reject(message, "INTERNAL_ERROR", type(exc).__name__, event)
        output = OutboundMessage(
            self._topics.validated_events, message.key, EVENT_CODEC.encode(normalized)
        )
        return Routed(output, None, normalized)

    def _reject(
        self, message: InboundMessage, reason: str, text: str, event: m.RegistryEvent | None
    ) -> Routed:
        output = dead_letter(
            message,
            topic=self._topics.dead_letters,
            stage=STAGE,
            reason=reason,
            description=text,
            event=event,
        )
        return Routed(output, reason, event)

    async def __call__(self, batch: Sequence[InboundMessage]) -> None:
        started = time.perf_counter()
        now = self._clock()
        routed = [self.route(message, now) for message in batch]
        # Before sending: a worker stopped by the limit has sent nothing of this batch.
        self._limit.observe((msg, r.reason) for msg, r in zip(batch, routed, strict=True))
        await self._producer.send_all([r.output for r in routed])
        # Counted only once delivered, so a retried batch is not counted twice.
        for r in routed:
            if r.reason is not None:
                metrics.EVENTS_DEAD_LETTERED.labels(STAGE, r.reason).inc()
            elif r.event is not None:
                metrics.EVENTS_VALIDATED.labels(
                    r.event.event_type.value, r.event.source_registry.value
                ).inc()
        metrics.EVENTS_CONSUMED.labels(STAGE, self._topics.registry_events).inc(len(batch))
        metrics.BATCH_SIZE.labels(STAGE).observe(len(batch))
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def build(settings: Settings) -> Worker:
    app = make_app(settings, "validator")
    producer = BatchProducer(settings.kafka)
    step = ValidatorStep(settings, producer)
    register_batch_agent(app, settings.topics.registry_events, step, settings, STAGE)
    return Worker(app, closers=[producer.close])
