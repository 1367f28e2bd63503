"""The validator's wiring: its resources, from settings, around its step."""

from __future__ import annotations

from datetime import timedelta

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.matching import PostgresMatchingStore
from popsync.adapters.postgres.pins import PostgresAliasDirectory, PostgresPinAllocator
from popsync.adapters.postgres.publishers import PostgresPublisherDirectory
from popsync.adapters.postgres.quarantine import PostgresQuarantine
from popsync.runtime.quarantine import SourceGuard
from popsync.runtime.worker import Worker
from popsync.settings import Settings
from popsync.trust.verification import Verifier

from .step import ValidatorStep


def build(settings: Settings) -> Worker:
    worker = Worker(settings, "validator")
    producer = worker.closing(BatchProducer(settings.kafka))
    db = worker.closing(Database(settings.postgres, application_name="popsync-validator"))
    limit = settings.dead_letter_limit
    guard = SourceGuard(PostgresQuarantine(db), limit.quarantine_refresh_seconds)
    step = ValidatorStep(
        settings,
        PostgresPinAllocator(db),
        PostgresAliasDirectory(db),
        PostgresMatchingStore(db),
        guard=guard,
        verifier=Verifier(
            PostgresPublisherDirectory(db),
            settings.trust.directory_refresh_seconds,
            timedelta(seconds=settings.trust.expiry_grace_seconds),
        ),
    )
    worker.process_with(step, producer, guard)
    return worker
