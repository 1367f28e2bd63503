"""The embedded broker and PostgreSQL are real servers: exercise them for real."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from popsync.adapters.kafka.admin import PartitionCountMismatchError, TopicSpec, provision_topics
from popsync.dev.embedded import EmbeddedBroker, EmbeddedPostgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(
    server_workdir: Callable[[str], AbstractContextManager[Path]],
) -> Iterator[EmbeddedBroker]:
    with server_workdir("broker") as workdir, EmbeddedBroker(workdir) as running:
        yield running


def _consume(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-embedded-services",  # unused by assign(), required by the client
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    received: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(received) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            received.append(msg)
    finally:
        consumer.close()
    return received


def _value(msg: Message) -> str:
    value = msg.value()
    assert isinstance(value, bytes)
    return value.decode()


def _partition(msg: Message) -> int:
    partition = msg.partition()
    assert partition is not None
    return partition


def test_broker_provisions_topics_and_round_trips_messages(broker: EmbeddedBroker) -> None:
    topic = "embedded.roundtrip"
    spec = TopicSpec(topic, partitions=3, config={"cleanup.policy": "delete"})
    provision_topics(broker.bootstrap_servers, [spec])
    provision_topics(broker.bootstrap_servers, [spec])  # idempotent

    metadata = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 3

    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True})
    delivered: dict[str, int] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[_value(msg)] = _partition(msg)

    for i in range(100):
        producer.produce(topic, key=f"key-{i}", value=f"value-{i}", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []
    assert len(delivered) == 100

    received = _consume(broker.bootstrap_servers, topic, partitions=3, expected=100)
    values = {_value(m): _partition(m) for m in received}
    assert values == delivered  # every message once, on the partition it was acked on
    assert len(set(values.values())) > 1
    for partition in range(3):
        offsets = [m.offset() or 0 for m in received if m.partition() == partition]
        assert offsets == sorted(offsets)


def test_provision_rejects_a_different_partition_count(broker: EmbeddedBroker) -> None:
    topic = "embedded.mismatch"
    provision_topics(broker.bootstrap_servers, [TopicSpec(topic, partitions=3)])
    with pytest.raises(PartitionCountMismatchError, match="embedded.mismatch"):
        provision_topics(broker.bootstrap_servers, [TopicSpec(topic, partitions=5)])


def test_broker_stop_start_and_kill(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker")
    broker.start()
    try:
        port = broker.port
        assert broker.is_running
        broker.stop()
        assert not broker.is_running
        broker.start()  # same port again, right after the stop
        assert broker.is_running and broker.port == port
        provision_topics(broker.bootstrap_servers, [TopicSpec("embedded.after-restart", 1)])
        broker.kill()
        assert not broker.is_running
    finally:
        broker.stop()
    assert (tmp_path / "broker" / "broker.log").read_text().count("start") >= 2


def _count_rows(pg: EmbeddedPostgres) -> int:
    with psycopg.connect(pg.dsn("popsync_test")) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])


def _insert(pg: EmbeddedPostgres, names: list[str]) -> None:
    with psycopg.connect(pg.dsn("popsync_test")) as conn:
        conn.cursor().executemany("INSERT INTO items (name) VALUES (%s)", [(n,) for n in names])


@pytest.fixture
def postgres(
    server_workdir: Callable[[str], AbstractContextManager[Path]],
) -> Iterator[EmbeddedPostgres]:
    with server_workdir("postgres") as workdir:
        pg = EmbeddedPostgres(workdir / "pgdata", fast=True)
        pg.start()
        try:
            pg.create_database("popsync_test")
            pg.create_database("popsync_test")  # idempotent
            with psycopg.connect(pg.dsn("popsync_test")) as conn:
                conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
            yield pg
        finally:
            pg.stop()
        assert not pg.is_running


def test_postgres_keeps_data_across_stop_and_restart(postgres: EmbeddedPostgres) -> None:
    port = postgres.port
    _insert(postgres, ["ana", "bo"])
    postgres.stop()
    assert not postgres.is_running
    postgres.start()
    assert postgres.port == port
    assert _count_rows(postgres) == 2
    _insert(postgres, ["cy"])
    postgres.restart()
    assert postgres.port == port
    assert _count_rows(postgres) == 3


def test_postgres_recovers_after_kill(postgres: EmbeddedPostgres) -> None:
    _insert(postgres, ["ana", "bo"])
    idle = psycopg.connect(postgres.dsn("popsync_test"))  # a client connected at the crash
    try:
        postgres.kill()
        assert not postgres.is_running
        postgres.start()
        assert _count_rows(postgres) == 2  # committed rows survive the crash
        _insert(postgres, ["cy"])
        postgres.kill()
        postgres.start()
        assert _count_rows(postgres) == 3
    finally:
        idle.close()
    assert "automatic recovery in progress" in postgres.log_path.read_text()


def test_postgres_listens_on_tcp_with_utf8_semantics(postgres: EmbeddedPostgres) -> None:
    # Password authentication, like production: the DSN carries the generated password.
    assert re.match(rf"postgresql://postgres:[^@]+@127\.0\.0\.1:{postgres.port}/", postgres.dsn())
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute(
            "SELECT inet_server_addr()::text, current_setting('server_encoding'), upper('žé')"
        ).fetchone()
    assert row == ("127.0.0.1/32", "UTF8", "ŽÉ")


def test_postgres_is_sized_for_sustained_writes(postgres: EmbeddedPostgres) -> None:
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute(
            "SELECT current_setting('max_wal_size'), current_setting('checkpoint_timeout'),"
            " current_setting('shared_buffers')"
        ).fetchone()
    assert row == ("8GB", "15min", "1GB")
