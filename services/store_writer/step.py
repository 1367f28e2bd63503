"""Store writer: citizen updates and conflicts into PostgreSQL, a batch per transaction.

Writes are idempotent and the consumed offsets are kept in the same transaction
as the rows (`popsync.adapters.postgres.citizens`), so a batch re-delivered after a
crash leaves the tables exactly as one delivery would.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from popsync.adapters.postgres.citizens import Consumed, WriteResult
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.runtime import metrics, observability
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import Rejected, StepResult
from popsync.settings import TopicSettings

STAGE = "store-writer"
UPDATE_CODEC = Codec(m.CitizenUpdate)
CONFLICT_CODEC = Codec(m.MergeConflict)


class CitizenWriter(Protocol):
    """The central store's tables (`popsync.adapters.postgres.citizens.CitizenStore`)."""

    async def write(self, batch: Sequence[Consumed]) -> WriteResult: ...


class StoreWriterStep:
    def __init__(self, topics: TopicSettings, store: CitizenWriter) -> None:
        self._topics = topics
        self._store = store

    async def __call__(self, batch: Sequence[InboundMessage]) -> StepResult:
        consumed: list[Consumed] = []
        rejected: dict[int, Rejected] = {}
        for i, message in enumerate(batch):
            record: m.CitizenUpdate | m.MergeConflict | None = None
            try:
                record = self._decode(message)
            except DecodeError as exc:
                rejected[i] = Rejected(exc.reason, str(exc))
            # A rejected message is consumed all the same: its offset moves on with the rows.
            consumed.append(Consumed(message.topic, message.partition, message.offset, record))

        async def write() -> None:  # once the dead letters are out
            result = await self._store.write(consumed)
            self._count(batch[0].topic, result)

        return StepResult(rejected=rejected, finish=write)

    def _decode(self, message: InboundMessage) -> m.CitizenUpdate | m.MergeConflict:
        record: m.CitizenUpdate | m.MergeConflict
        if message.topic == self._topics.conflicts:
            record = CONFLICT_CODEC.decode(message.value)
        else:
            record = UPDATE_CODEC.decode(message.value)
        return record

    def _count(self, topic: str, result: WriteResult) -> None:
        observability.observe_event_to_store(result.records, datetime.now(UTC))  # committed
        table = "citizen_conflicts" if topic == self._topics.conflicts else "citizen_history"
        metrics.STORE_ROWS_WRITTEN.labels(table).inc(len(result.records))
        metrics.DUPLICATES_SKIPPED.labels(STAGE).inc(result.skipped)
