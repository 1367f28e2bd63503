"""One contract suite per port, run against its in-memory fake (tests/fakes.py) and its real
adapter, so that a fake cannot drift from what it stands in for.

Every fixture here is parametrized "fake" / "real". The real adapter gets a pipeline of its
own on the session's embedded stack (database and topics named `contract_<port>_<n>`), so no
test sees another's rows; the fake needs no stack, so `-k fake` starts nothing. Where a port
has no read side of its own, the fixture gives one accessor of the same shape for both
implementations (what a producer delivered, which reviews a matching store kept), and the
tests assert through it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from psycopg.types.json import Jsonb

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.matching import PostgresMatchingStore
from popsync.adapters.postgres.pins import PostgresAliasDirectory, PostgresPinAllocator
from popsync.adapters.postgres.sync_state import SyncStateStore
from popsync.domain.aliases import AliasDirectory
from popsync.domain.allocation import PinAllocator
from popsync.identity import CandidateCitizen
from popsync.identity.decisions import Review
from popsync.ops.provision import migrate, provision
from popsync.settings import KafkaSettings, Settings
from services.synchronizer.step import SyncStates
from tests.fakes import (
    Delivered,
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    InMemorySyncStates,
    MatchingUnderTest,
    ProducerUnderTest,
    RecordingProducer,
)

IMPLEMENTATIONS = ["fake", "real"]
_names = itertools.count(1)


def _fresh_settings(request: pytest.FixtureRequest, port: str) -> Settings:
    """Settings of a pipeline of its own (database, topics, groups) on the session's stack."""
    stack = request.getfixturevalue("stack")
    settings: Settings = stack.isolated_settings(f"contract_{port}_{next(_names)}")
    return settings


def _database(request: pytest.FixtureRequest, port: str) -> tuple[Settings, Database]:
    settings = _fresh_settings(request, port)
    migrate(settings)
    return settings, Database(settings.postgres, application_name=f"contract-{port}")


# --------------------------------------------------------------------------------------------
# Producer: what landed on a topic


def _read_topic(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> list[Delivered]:
    """Every record of `topic` up to each partition's end, by partition then offset
    (`popsync.adapters.kafka.reader.read_to_end` yields values only; keys and headers
    are part of this contract)."""
    consumer = Consumer(
        {
            **kafka.librdkafka(),
            "group.id": f"{kafka.client_id}-contract-reader",  # assigned, never joined
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(timeout=timeout).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[tuple[int, int, Delivered]] = []
        open_partitions = set(partitions)
        deadline = time.monotonic() + timeout
        while open_partitions:
            assert time.monotonic() < deadline, f"{topic}: no end of {sorted(open_partitions)}"
            for message in consumer.consume(500, 0.1):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                elif error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                else:
                    headers = tuple(message.headers() or ())
                    delivered = Delivered(message.key(), message.value(), headers)
                    records.append((message.partition(), message.offset(), delivered))
        return [delivered for _, _, delivered in sorted(records, key=lambda r: r[:2])]
    finally:
        consumer.close()


@pytest.fixture(params=IMPLEMENTATIONS)
def producer(request: pytest.FixtureRequest) -> Iterator[ProducerUnderTest]:
    if request.param == "fake":
        fake = RecordingProducer()

        def sent(topic: str) -> list[Delivered]:
            return [Delivered.of(m) for m in fake.sent if m.topic == topic]

        yield ProducerUnderTest(fake, ("contract.first", "contract.second"), sent)
        return
    settings = _fresh_settings(request, "producer")
    provision(settings)
    real = BatchProducer(settings.kafka)
    try:
        yield ProducerUnderTest(
            real,
            (settings.topics.registry_events, settings.topics.dead_letters),
            lambda topic: _read_topic(settings.kafka, topic),
        )
    finally:
        real.close()


# --------------------------------------------------------------------------------------------
# The PostgreSQL stores


@pytest.fixture(params=IMPLEMENTATIONS)
def sync_states(request: pytest.FixtureRequest) -> Iterator[SyncStates]:
    if request.param == "fake":
        yield InMemorySyncStates()
        return
    _, db = _database(request, "states")
    try:
        yield SyncStateStore(db)
    finally:
        asyncio.run(db.close())


@pytest.fixture(params=IMPLEMENTATIONS)
def pin_allocator(request: pytest.FixtureRequest) -> Iterator[PinAllocator]:
    if request.param == "fake":
        yield InMemoryPinAllocator()
        return
    _, db = _database(request, "pins")
    try:
        yield PostgresPinAllocator(db)
    finally:
        asyncio.run(db.close())


@pytest.fixture(params=IMPLEMENTATIONS)
def alias_directory(request: pytest.FixtureRequest) -> Iterator[AliasDirectory]:
    if request.param == "fake":
        yield InMemoryAliasDirectory()
        return
    _, db = _database(request, "aliases")
    try:
        yield PostgresAliasDirectory(db)
    finally:
        asyncio.run(db.close())


_SEED_CITIZEN = """
    INSERT INTO citizens (pin, version, full_name, birth_date, sex, birthplace_province,
                          marital_status, life_status, snapshot, last_event_id, last_event_at)
    VALUES (%s, 1, %s, %s, %s, %s, 'SINGLE', 'ALIVE', %s, %s, now())
"""
_SEED_ALIAS = "INSERT INTO citizen_aliases (alias, pin, kind, event_id) VALUES (%s, %s, %s, %s)"
_KEPT_REVIEWS = """
    SELECT review_id, event_id, source_registry, source_province, original_topic,
           original_key, original_value
      FROM match_reviews
"""


@pytest.fixture(params=IMPLEMENTATIONS)
def matching(request: pytest.FixtureRequest) -> Iterator[MatchingUnderTest]:
    if request.param == "fake":
        fake = InMemoryMatchingStore()

        def seed_fake(citizens: Sequence[CandidateCitizen]) -> None:
            fake.citizens.update({c.pin: c for c in citizens})

        yield MatchingUnderTest(fake, seed_fake, lambda: dict(fake.reviews))
        return
    settings, db = _database(request, "matching")
    dsn = settings.postgres.dsn.get_secret_value()

    def seed_real(citizens: Sequence[CandidateCitizen]) -> None:
        with psycopg.connect(dsn) as conn:
            for c in citizens:
                snapshot = Jsonb({"pin": c.pin, "full_name": c.full_name})
                row: tuple[Any, ...] = (c.pin, c.full_name, c.birth_date, c.sex)
                conn.execute(
                    _SEED_CITIZEN, (*row, c.birthplace_province, snapshot, f"seed-{c.pin}")
                )
                for alias in c.aliases:
                    conn.execute(_SEED_ALIAS, (alias, c.pin, "CMND", f"seed-{c.pin}"))

    def kept_reviews() -> dict[str, Review]:
        with psycopg.connect(dsn) as conn:
            return {row[0]: Review(*row) for row in conn.execute(_KEPT_REVIEWS).fetchall()}

    try:
        yield MatchingUnderTest(PostgresMatchingStore(db), seed_real, kept_reviews)
    finally:
        asyncio.run(db.close())
