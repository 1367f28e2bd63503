"""SIGTERM drains: the batch in flight becomes durable and is committed, or, past the
grace period, nothing more is committed and the batch is re-delivered.

The synchronizer is held mid-batch by a PostgreSQL lock on `citizens` taken from the test
(it writes the store in the transaction that saves its states), so a batch is certainly in
flight when the signal arrives.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.stack import EmbeddedStack, WorkerProcess, wait_until
from popsync.domain.pin import make_pin
from popsync.ops.publish import Publisher
from popsync.runtime.exits import EXIT_UNFINISHED_BATCH
from popsync.settings import Settings, WorkerName
from tests.builders import birth, move
from tests.polling import eventually
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

NAME = "shutdowntest"
GRACE = 8.0  # seconds; the drain test's lock is released well within it
SHORT_GRACE = 3.0  # the lock outlives it
EXIT_MARGIN = 5.0  # the process must be gone within grace + this
PARTITIONS = 2

_serials = itertools.count(900_000)


def new_pin() -> str:
    return make_pin("079", "F", 1990, next(_serials)).value


@dataclass
class Env:
    stack: EmbeddedStack
    settings: Settings
    publisher: Publisher
    workers: list[WorkerProcess] = field(default_factory=list)
    starts: itertools.count[int] = field(default_factory=itertools.count)

    def start(self, name: WorkerName, settings: Settings | None = None) -> WorkerProcess:
        log_path = self.stack.workdir / "logs" / f"{NAME}-{name}-{next(self.starts)}.log"
        worker = WorkerProcess(name, settings or self.settings, log_path)
        self.workers.append(worker)
        return worker

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.postgres.dsn.get_secret_value()) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def publish_citizens(self, pins: list[str]) -> None:
        events = [e for pin in pins for e in (birth(pin), move(pin, date(2020, 1, 1)))]
        self.publisher.publish(
            (e.subject_pin.encode() if e.subject_pin else None, e) for e in events
        )

    def history_count(self, pins: list[str]) -> int:
        return int(
            self.query("SELECT count(*) FROM citizen_history WHERE pin = ANY(%s)", pins)[0][0]
        )

    def applied(self, pins: list[str]) -> bool:
        """Every citizen at version 2 (birth and move), history complete."""
        rows = self.query("SELECT count(*) FROM citizens WHERE pin = ANY(%s) AND version = 2", pins)
        return rows[0][0] == len(pins) and self.history_count(pins) == 2 * len(pins)

    def warm_up(self) -> None:
        """One citizen through the whole pipeline: every worker is up and assigned."""
        pin = [new_pin()]
        self.publish_citizens(pin)
        assert eventually(lambda: self.applied(pin), timeout=90), "pipeline did not start"


@pytest.fixture(scope="module")
def env(stack: EmbeddedStack) -> Iterator[Env]:
    processing = {
        "batch_size": 20,
        "batch_window_seconds": 0.1,
        "retry_initial_seconds": 0.2,
        "retry_max_seconds": 1.0,
        "shutdown_grace_seconds": GRACE,
    }
    settings = stack.isolated_settings(
        NAME, topics={"partitions": PARTITIONS}, processing=processing
    )
    stack.prepare(settings)
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    env = Env(stack, settings, publisher)
    env.start("validator")
    try:
        yield env
    finally:
        for worker in env.workers:
            if worker.alive:
                worker.stop()


@contextmanager
def citizens_locked(settings: Settings) -> Iterator[None]:
    """Hold an exclusive lock on `citizens`: the synchronizer's saves wait for it."""
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        conn.execute(b"LOCK TABLE citizens IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.commit()


def a_write_waits_for_the_lock(env: Env) -> bool:
    rows = env.query(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(rows[0][0])


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The synchronizer group's committed offsets on validated events, as the broker has
    them."""
    consumer = Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": settings.groups.synchronizer,
            "enable.auto.commit": "false",
        }
    )
    try:
        topic = settings.topics.validated_events
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
        return {tp.partition: max(tp.offset, 0) for tp in found}
    finally:
        consumer.close()


def events_below(settings: Settings, ends: dict[int, int]) -> list[tuple[str, str]]:
    """(pin, event id) of every validated event below the given offsets."""
    consumer = Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": f"{NAME}-reader-{time.time()}",
            "enable.auto.commit": "false",
        }
    )
    topic, codec = settings.topics.validated_events, Codec(m.RegistryEvent)
    wanted = sum(ends.values())
    consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end])
    found: list[tuple[str, str]] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < wanted and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None and offset < ends[partition]:
                event = codec.decode(message.value())
                found.append((event.subject_pin or "", event.event_id))
    finally:
        consumer.close()
    assert len(found) == wanted, "could not read back the committed events"
    return found


def assert_committed_only_what_is_applied(env: Env, committed: dict[int, int]) -> None:
    """Never committed early: every event below a committed offset is in the store."""
    below = events_below(env.settings, committed)
    history = set(env.query("SELECT pin, event_id FROM citizen_history"))
    assert [e for e in below if e not in history] == []


def assert_exactly_once(env: Env, pins: list[str]) -> None:
    assert env.history_count(pins) == 2 * len(pins)
    (distinct,) = env.query(
        "SELECT count(DISTINCT event_id) FROM citizen_history WHERE pin = ANY(%s)", pins
    )[0]
    assert distinct == 2 * len(pins)


def sigterm_and_wait(worker: WorkerProcess, limit: float) -> tuple[int | None, float]:
    sent = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    wait_until(lambda: not worker.alive, timeout=limit, interval=0.05)
    return worker.process.poll(), time.monotonic() - sent


def test_sigterm_drains_the_batch_in_flight_commits_and_exits_0(env: Env) -> None:
    synchronizer = env.start("synchronizer")
    env.warm_up()
    before = committed_offsets(env.settings)
    pins = [new_pin() for _ in range(60)]
    with citizens_locked(env.settings):
        env.publish_citizens(pins)
        assert eventually(lambda: a_write_waits_for_the_lock(env), timeout=60)
        sent = time.monotonic()
        synchronizer.process.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert synchronizer.alive, f"it did not wait for its batch; see {synchronizer.log_path}"
    wait_until(lambda: not synchronizer.alive, timeout=GRACE + EXIT_MARGIN, interval=0.05)
    took = time.monotonic() - sent
    code = synchronizer.process.poll()
    log = synchronizer.log_path.read_text(errors="replace")
    assert code == 0, f"exit code {code}; see {synchronizer.log_path}"
    assert took < GRACE + EXIT_MARGIN
    assert "draining" in log and "drained in" in log

    committed = committed_offsets(env.settings)
    assert sum(committed.values()) > sum(before.values()), "the drained batch was not committed"
    assert_committed_only_what_is_applied(env, committed)
    assert not env.applied(pins), "the drain took more than the batch in flight"

    restarted = env.start("synchronizer")
    assert eventually(lambda: env.applied(pins), timeout=90), f"see {restarted.log_path}"
    assert_exactly_once(env, pins)
    code, took = sigterm_and_wait(restarted, GRACE + EXIT_MARGIN)
    assert code == 0, f"idle stop: exit code {code}; see {restarted.log_path}"
    assert took < GRACE + EXIT_MARGIN


def test_past_the_grace_period_exits_75_without_commit_and_loses_nothing(env: Env) -> None:
    short = env.settings.model_copy(
        update={
            "processing": env.settings.processing.model_copy(
                update={"shutdown_grace_seconds": SHORT_GRACE}
            )
        }
    )
    synchronizer = env.start("synchronizer", short)
    env.warm_up()
    pins = [new_pin() for _ in range(30)]
    with citizens_locked(env.settings):
        env.publish_citizens(pins)
        assert eventually(lambda: a_write_waits_for_the_lock(env), timeout=60)
        code, took = sigterm_and_wait(synchronizer, SHORT_GRACE + EXIT_MARGIN + 5)
        committed = committed_offsets(env.settings)
    log = synchronizer.log_path.read_text(errors="replace")
    assert code == EXIT_UNFINISHED_BATCH, f"exit code {code}; see {synchronizer.log_path}"
    assert SHORT_GRACE - 0.5 <= took < SHORT_GRACE + EXIT_MARGIN
    assert "grace exceeded" in log
    assert_committed_only_what_is_applied(env, committed)

    restarted = env.start("synchronizer", short)
    assert eventually(lambda: env.applied(pins), timeout=90), f"see {restarted.log_path}"
    assert_exactly_once(env, pins)
