"""Synchronizer: applies validated events to each citizen's state and emits updates.

One batch, in this order (each step idempotent, so a crash anywhere only
repeats work):
1. load the touched citizens' accepted events from PostgreSQL;
2. merge each event (`popsync.domain.merge`): an update per applied event, a
   conflict record per newly surfaced conflict, nothing for a duplicate;
3. send updates and conflicts and wait until the broker has them all;
4. save the new states (a state only moves forward in version);
5. return, so faust acks and later commits the batch's offsets.
A crash between 3 and 4 re-emits the same updates with the same versions on
restart; the store writer ignores versions it already has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from popsync import metrics
from popsync.adapters.kafka import BatchProducer, OutboundMessage
from popsync.adapters.store import Database, SyncStateStore
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.deadletter import DeadLetterLimit, Outcome, dead_letter
from popsync.domain.merge import Applied, CitizenState, Conflict, Duplicate, apply_event
from popsync.runtime import InboundMessage, Worker, make_app, register_batch_agent
from popsync.settings import Settings

log = logging.getLogger(__name__)
STAGE = "synchronizer"
EVENT_CODEC = Codec(m.RegistryEvent)
UPDATE_CODEC = Codec(m.CitizenUpdate)
CONFLICT_CODEC = Codec(m.MergeConflict)


@dataclass
class BatchResult:
    """What one batch produced; counted in metrics only once it is durable."""

    outputs: list[OutboundMessage] = field(default_factory=list)
    applied: list[m.RegistryEvent] = field(default_factory=list)
    conflict_codes: list[str] = field(default_factory=list)
    duplicates: int = 0
    dead_letter_reasons: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # for the dead-letter limit
    dirty: dict[str, tuple[int, list[bytes]]] = field(default_factory=dict)


class SynchronizerStep:
    def __init__(
        self,
        settings: Settings,
        producer: BatchProducer,
        states: SyncStateStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._topics = settings.topics
        self._producer = producer
        self._states = states
        self._clock = clock
        self._limit = DeadLetterLimit(settings.dead_letter_limit, STAGE)

    async def __call__(self, batch: Sequence[InboundMessage]) -> None:
        started = time.perf_counter()
        decoded, result = self._decode(batch)
        # Before sending: a worker stopped by the limit has sent nothing of this batch.
        self._limit.observe(result.outcomes)
        stored = await self._states.load({event.subject_pin or "" for _, event in decoded})
        self.merge(decoded, stored, result)
        await self._producer.send_all(result.outputs)
        await self._states.save(result.dirty)
        self._count(batch, result, started)

    def _decode(
        self, batch: Sequence[InboundMessage]
    ) -> tuple[list[tuple[InboundMessage, m.RegistryEvent]], BatchResult]:
        result = BatchResult()
        decoded = []
        for message in batch:
            try:
                event = EVENT_CODEC.decode(message.value)
                if event.subject_pin is None or message.key != event.subject_pin.encode():
                    raise DecodeError("KEY_PIN_MISMATCH", "validated event keyed wrongly")
            except DecodeError as exc:
                # Only a validator bug or a foreign producer gets here; park it.
                result.outputs.append(
                    dead_letter(
                        message,
                        topic=self._topics.dead_letters,
                        stage=STAGE,
                        reason=exc.reason,
                        description=str(exc),
                    )
                )
                result.dead_letter_reasons.append(exc.reason)
                result.outcomes.append((message, exc.reason))
                continue
            decoded.append((message, event))
            result.outcomes.append((message, None))
        return decoded, result

    def merge(
        self,
        decoded: Sequence[tuple[InboundMessage, m.RegistryEvent]],
        stored: dict[str, list[bytes]],
        result: BatchResult,
    ) -> None:
        """Apply the batch's events in arrival order to states loaded from the store."""
        now = self._clock()
        raw: dict[str, dict[str, bytes]] = {}
        states: dict[str, CitizenState] = {}
        for message, event in decoded:
            pin = event.subject_pin or ""
            if pin not in states:
                events = [EVENT_CODEC.decode(value) for value in stored.get(pin, [])]
                states[pin] = CitizenState.from_events(pin, events)
                raw[pin] = {e.event_id: v for e, v in zip(events, stored.get(pin, []), strict=True)}
            outcome = apply_event(states[pin], event)
            if isinstance(outcome, Duplicate):
                result.duplicates += 1
                continue
            if not isinstance(outcome, Applied):
                result.outputs.append(self._conflict(event, outcome.conflict, now))
                result.conflict_codes.append(outcome.conflict.code)
                continue
            states[pin] = outcome.state
            raw[pin][event.event_id] = message.value or b""
            result.dirty[pin] = (outcome.version, list(raw[pin].values()))
            result.applied.append(event)
            result.outputs.append(self._update(event, outcome, now))
            for event_id, conflict in outcome.new_conflicts.items():
                conflicting = outcome.state.events[event_id]
                result.outputs.append(self._conflict(conflicting, conflict, now))
                result.conflict_codes.append(conflict.code)
            for event_id, conflict in outcome.resolved_conflicts.items():
                resolved = outcome.state.events[event_id]
                result.outputs.append(self._conflict(resolved, conflict, now, resolved=True))

    def _update(self, event: m.RegistryEvent, outcome: Applied, now: datetime) -> OutboundMessage:
        update = m.CitizenUpdate(
            pin=outcome.snapshot.pin,
            version=outcome.version,
            snapshot=outcome.snapshot,
            changed_fields=list(outcome.changed_fields),
            event_id=event.event_id,
            event_type=event.event_type,
            source_registry=event.source_registry,
            occurred_at=event.occurred_at,
            applied_at=now,
            recorded_at=event.recorded_at,
        )
        key = update.pin.encode()
        return OutboundMessage(self._topics.citizen_updates, key, UPDATE_CODEC.encode(update))

    def _conflict(
        self, event: m.RegistryEvent, conflict: Conflict, now: datetime, resolved: bool = False
    ) -> OutboundMessage:
        record = m.MergeConflict(
            pin=event.subject_pin or "",
            event_id=event.event_id,
            event_type=event.event_type,
            source_registry=event.source_registry,
            conflict_code=conflict.code,
            message=conflict.message,
            resolved=resolved,
            occurred_at=event.occurred_at,
            detected_at=now,
        )
        key = record.pin.encode()
        return OutboundMessage(self._topics.conflicts, key, CONFLICT_CODEC.encode(record))

    def _count(self, batch: Sequence[InboundMessage], result: BatchResult, started: float) -> None:
        metrics.EVENTS_CONSUMED.labels(STAGE, self._topics.validated_events).inc(len(batch))
        for event in result.applied:
            metrics.UPDATES_APPLIED.labels(
                event.event_type.value, event.source_registry.value
            ).inc()
        for code in result.conflict_codes:
            metrics.CONFLICTS.labels(code).inc()
        for reason in result.dead_letter_reasons:
            metrics.EVENTS_DEAD_LETTERED.labels(STAGE, reason).inc()
        metrics.DUPLICATES_SKIPPED.labels(STAGE).inc(result.duplicates)
        metrics.BATCH_SIZE.labels(STAGE).observe(len(batch))
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def build(settings: Settings) -> Worker:
    app = make_app(settings, "synchronizer")
    producer = BatchProducer(settings.kafka)
    db = Database(settings.postgres)
    step = SynchronizerStep(settings, producer, SyncStateStore(db))
    register_batch_agent(app, settings.topics.validated_events, step, settings, STAGE)
    return Worker(app, closers=[producer.close])
