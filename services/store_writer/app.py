"""The store writer's wiring: its resources, from settings, around its step."""

from __future__ import annotations

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.citizens import CitizenStore
from popsync.adapters.postgres.database import Database
from popsync.runtime.worker import Worker
from popsync.settings import Settings

from .step import StoreWriterStep


def build(settings: Settings) -> Worker:
    worker = Worker(settings, "store-writer")
    producer = worker.closing(BatchProducer(settings.kafka))
    db = worker.closing(Database(settings.postgres, application_name="popsync-store-writer"))
    step = StoreWriterStep(settings.topics, CitizenStore(db, settings.groups.store_writer))
    worker.process_with(step, producer)
    return worker
