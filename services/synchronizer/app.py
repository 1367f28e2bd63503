"""The synchronizer's wiring: its resources, from settings, around its step."""

from __future__ import annotations

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.quarantine import PostgresQuarantine
from popsync.adapters.postgres.sync_state import SyncStateStore
from popsync.runtime.quarantine import SourceGuard
from popsync.runtime.worker import Worker
from popsync.settings import Settings

from .step import SynchronizerStep


def build(settings: Settings) -> Worker:
    worker = Worker(settings, "synchronizer")
    producer = worker.closing(BatchProducer(settings.kafka))
    db = worker.closing(Database(settings.postgres, application_name="popsync-synchronizer"))
    step = SynchronizerStep(settings.topics, settings.processing, SyncStateStore(db))
    # Its parks are judged per source too; a quarantine it decides stops the source at the
    # validator's door.
    limit = settings.dead_letter_limit
    guard = SourceGuard(PostgresQuarantine(db), limit.quarantine_refresh_seconds)
    worker.process_with(step, producer, guard)
    return worker
