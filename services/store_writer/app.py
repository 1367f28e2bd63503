"""Store writer: citizen updates and conflicts into PostgreSQL, a batch per transaction.

Writes are idempotent and the consumed offsets are kept in the same transaction
as the rows (see `popsync.adapters.postgres.store`), so a batch re-delivered after a crash
leaves the tables exactly as one delivery would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from popsync.adapters.kafka.producer import BatchProducer, OutboundMessage
from popsync.adapters.postgres.store import CitizenStore, Consumed, Database
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.runtime import metrics, observability
from popsync.runtime.deadletter import dead_letter
from popsync.runtime.worker import InboundMessage, Worker, make_app, register_batch_step
from popsync.settings import Settings

STAGE = "store-writer"
UPDATE_CODEC = Codec(m.CitizenUpdate)
CONFLICT_CODEC = Codec(m.MergeConflict)


class StoreWriterStep:
    def __init__(self, settings: Settings, store: CitizenStore, producer: BatchProducer) -> None:
        self._topics = settings.topics
        self._store = store
        self._producer = producer

    async def __call__(self, batch: Sequence[InboundMessage]) -> None:
        started = time.perf_counter()
        consumed: list[Consumed] = []
        rejected: list[tuple[OutboundMessage, str]] = []
        for message in batch:
            record: m.CitizenUpdate | m.MergeConflict | None = None
            try:
                if message.topic == self._topics.conflicts:
                    record = CONFLICT_CODEC.decode(message.value)
                else:
                    record = UPDATE_CODEC.decode(message.value)
            except DecodeError as exc:
                parked = dead_letter(
                    message,
                    topic=self._topics.dead_letters,
                    stage=STAGE,
                    reason=exc.reason,
                    description=str(exc),
                )
                rejected.append((parked, exc.reason))
            consumed.append(Consumed(message.topic, message.partition, message.offset, record))
        if rejected:
            await self._producer.send_all([parked for parked, _ in rejected])
        result = await self._store.write(consumed)
        observability.observe_event_to_store(result.records, datetime.now(UTC))  # committed
        for _, reason in rejected:
            metrics.EVENTS_DEAD_LETTERED.labels(STAGE, reason).inc()
        conflicts = batch[0].topic == self._topics.conflicts
        table = "citizen_conflicts" if conflicts else "citizen_history"
        metrics.STORE_ROWS_WRITTEN.labels(table).inc(len(result.records))
        metrics.DUPLICATES_SKIPPED.labels(STAGE).inc(result.skipped)
        metrics.EVENTS_CONSUMED.labels(STAGE, batch[0].topic).inc(len(batch))
        metrics.BATCH_SIZE.labels(STAGE).observe(len(batch))
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def build(settings: Settings) -> Worker:
    app = make_app(settings, "store-writer")
    producer = BatchProducer(settings.kafka)
    store = CitizenStore(Database(settings.postgres), settings.groups.store_writer)
    step = StoreWriterStep(settings, store, producer)
    for topic in (settings.topics.citizen_updates, settings.topics.conflicts):
        register_batch_step(app, topic, step, settings, f"{STAGE}:{topic}")
    return Worker(app, closers=[producer.close])
