"""Store writer: citizen updates and conflicts into PostgreSQL, a batch per transaction.

Writes are idempotent (see `popsync.adapters.store`), so a batch re-delivered
after a crash leaves the tables exactly as one delivery would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from popsync import metrics
from popsync.adapters.kafka import BatchProducer, OutboundMessage
from popsync.adapters.store import CitizenStore, Database
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.deadletter import dead_letter
from popsync.runtime import InboundMessage, Worker, make_app, register_batch_agent
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
        updates: list[m.CitizenUpdate] = []
        conflicts: list[m.MergeConflict] = []
        rejected: list[tuple[OutboundMessage, str]] = []
        for message in batch:
            try:
                if message.topic == self._topics.conflicts:
                    conflicts.append(CONFLICT_CODEC.decode(message.value))
                else:
                    updates.append(UPDATE_CODEC.decode(message.value))
            except DecodeError as exc:
                parked = dead_letter(
                    message,
                    topic=self._topics.dead_letters,
                    stage=STAGE,
                    reason=exc.reason,
                    description=str(exc),
                )
                rejected.append((parked, exc.reason))
        if rejected:
            await self._producer.send_all([parked for parked, _ in rejected])
        await self._store.write(updates, conflicts)
        for _, reason in rejected:
            metrics.EVENTS_DEAD_LETTERED.labels(STAGE, reason).inc()
        metrics.STORE_ROWS_WRITTEN.labels("citizen_history").inc(len(updates))
        metrics.STORE_ROWS_WRITTEN.labels("citizen_conflicts").inc(len(conflicts))
        metrics.EVENTS_CONSUMED.labels(STAGE, batch[0].topic).inc(len(batch))
        metrics.BATCH_SIZE.labels(STAGE).observe(len(batch))
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)


def build(settings: Settings) -> Worker:
    app = make_app(settings, "store-writer")
    producer = BatchProducer(settings.kafka)
    step = StoreWriterStep(settings, CitizenStore(Database(settings.postgres)), producer)
    for topic in (settings.topics.citizen_updates, settings.topics.conflicts):
        register_batch_agent(app, topic, step, settings, f"{STAGE}:{topic}")
    return Worker(app, closers=[producer.close])
