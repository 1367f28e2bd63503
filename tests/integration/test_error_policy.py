"""The one error path in each of the workers, on the real broker and PostgreSQL.

Each worker's own step, wired as `services/<name>/app.py` wires it, is given a batch:
- with a bug injected for one record: that record is parked as INTERNAL_ERROR on the
  dead-letter topic, and every other record of the batch reaches its output;
- during a PostgreSQL crash: the batch waits, is retried once PostgreSQL is back, and
  every record reaches its output, none twice (the synchronizer's: its updates on their
  topic and its rows in the store).
Then the worker's resources are closed and PostgreSQL holds no connection of it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from popsync.services.synchronizer import app as synchronizer
from popsync.services.validator import app as validator

from popsync.adapters.kafka.reader import read_to_end
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.stack import EmbeddedStack, embedded_stack
from popsync.domain.pin import make_pin
from popsync.domain.rules import check_event
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import INTERNAL_ERROR
from popsync.runtime.worker import Worker
from popsync.settings import WORKER_NAMES, Settings, WorkerName
from tests.builders import birth
from tests.signing import signed

pytestmark = pytest.mark.integration

EVENTS = Codec(m.RegistryEvent)
LETTERS = Codec(m.DeadLetter)
BUILD: dict[WorkerName, Callable[[Settings], Worker]] = {
    "validator": validator.build,
    "synchronizer": synchronizer.build,
}
UPDATES = Codec(m.CitizenUpdate)
COUNT = 12
FAULTY = 5  # the record the injected bug fails on
NOW = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """A stack of its own: the outage tests crash its PostgreSQL."""
    with embedded_stack(tmp_path_factory.mktemp("errors"), fast_postgres=True) as running:
        yield running


_runs = iter(range(10**6))


def fresh_settings(stack: EmbeddedStack, worker: WorkerName) -> Settings:
    name = f"err{next(_runs)}{worker.replace('-', '')}"
    settings = stack.isolated_settings(name, processing={"retry_max_seconds": 0.5})
    stack.prepare(settings)  # topics, schema, and the publishers the events are signed by
    return settings


def pins(count: int, offset: int) -> list[str]:
    return [make_pin("079", "F", 1990, offset * 1000 + i).value for i in range(count)]


def registry_events(pins: Sequence[str]) -> list[m.RegistryEvent]:
    return [birth(pin) for pin in pins]


def inputs(settings: Settings, worker: WorkerName, pins: Sequence[str]) -> list[InboundMessage]:
    """What `worker` consumes for these citizens' births, as its input topic carries it."""
    events = registry_events(pins)
    if worker == "validator":
        topic = settings.topics.registry_events
        # signed by its registry, as the validator accepts it
        return [
            signed(message(topic, i, e.subject_pin, EVENTS.encode(e))) for i, e in enumerate(events)
        ]
    skew = timedelta(seconds=settings.processing.future_skew_seconds)
    validated = [check_event(e, (e.subject_pin or "").encode(), NOW, skew) for e in events]
    topic = settings.topics.validated_events
    return [message(topic, i, e.subject_pin, EVENTS.encode(e)) for i, e in enumerate(validated)]


def message(topic: str, offset: int, pin: str | None, value: bytes) -> InboundMessage:
    return InboundMessage(topic, 0, offset, pin.encode() if pin else None, value)


def delivered(settings: Settings, worker: WorkerName) -> int:
    """How many records of the batch reached the worker's output."""
    if worker == "validator":
        topic = settings.topics.validated_events
        return sum(1 for *_, value in read_to_end(settings.kafka, topic, 30) if value)
    # The synchronizer's: the versions it emitted, each stored once with the same version.
    topic = settings.topics.citizen_updates
    emitted = [UPDATES.decode(v) for *_, v in read_to_end(settings.kafka, topic, 30) if v]
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        stored = conn.execute("SELECT pin, version FROM citizen_history").fetchall()
    assert sorted(stored) == sorted({(u.pin, u.version) for u in emitted})
    return len(stored)


def dead_letters(settings: Settings) -> list[m.DeadLetter]:
    topic = settings.topics.dead_letters
    return [LETTERS.decode(v) for *_, v in read_to_end(settings.kafka, topic, 30) if v]


def run(worker: Worker, batch: Sequence[InboundMessage]) -> None:
    """The batch through the worker's processor (as its consumer would hand it), then close."""
    process = worker.processes[batch[0].topic]

    async def scenario() -> None:
        await process(batch)
        await worker.close()

    asyncio.run(scenario())


def inject_bug(monkeypatch: pytest.MonkeyPatch, worker: WorkerName, pin: str) -> None:
    """A bug that strikes one citizen, in the part of the worker that is its own."""

    def failing(real: Callable[..., Any], pin_of: Callable[..., str | None]) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if pin_of(*args, **kwargs) == pin:
                raise RuntimeError(f"injected bug for {pin}")  # text a log must not show
            return real(*args, **kwargs)

        return wrapper

    if worker == "validator":
        from popsync.services.validator import step

        monkeypatch.setattr(
            step, "check_event", failing(step.check_event, lambda e, *_: e.subject_pin)
        )
    elif worker == "synchronizer":
        from popsync.services.synchronizer import step as sync_step

        monkeypatch.setattr(
            sync_step,
            "apply_events",
            failing(sync_step.apply_events, lambda _, events: events[0].subject_pin),
        )


@pytest.mark.parametrize("worker", WORKER_NAMES)
def test_a_bug_parks_only_its_record_and_the_others_flow(
    stack: EmbeddedStack,
    worker: WorkerName,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = fresh_settings(stack, worker)
    citizens = pins(COUNT, offset=next(_runs))
    inject_bug(monkeypatch, worker, citizens[FAULTY])
    run(BUILD[worker](settings), inputs(settings, worker, citizens))

    (letter,) = dead_letters(settings)
    assert (letter.reason_code, letter.stage) == (INTERNAL_ERROR, worker)
    assert letter.original_offset == FAULTY
    assert "RuntimeError" in letter.message and citizens[FAULTY] not in letter.message
    assert delivered(settings, worker) == COUNT - 1
    assert f"injected bug for {citizens[FAULTY]}" not in caplog.text


def test_a_bug_in_the_synchronizers_store_rows_parks_only_its_record(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's rows are written in the synchronizer's save, after its updates are out: a
    # bug there fails the batch, which is split until the one message at fault is parked.
    from popsync.adapters.postgres import citizens as rows

    settings = fresh_settings(stack, "synchronizer")
    citizens = pins(COUNT, offset=next(_runs))
    faulty = citizens[FAULTY]

    def history_row(update: m.CitizenUpdate) -> tuple[Any, ...]:
        if update.pin == faulty:
            raise RuntimeError("injected bug")
        return real(update)

    real = rows._history_row
    monkeypatch.setattr(rows, "_history_row", history_row)
    run(BUILD["synchronizer"](settings), inputs(settings, "synchronizer", citizens))

    (letter,) = dead_letters(settings)
    assert (letter.reason_code, letter.stage, letter.original_offset) == (
        INTERNAL_ERROR,
        "synchronizer",
        FAULTY,
    )
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        stored = conn.execute("SELECT pin FROM citizen_history").fetchall()
        states = conn.execute("SELECT pin FROM sync_citizen_state").fetchall()
    others = sorted((pin,) for pin in citizens if pin != faulty)
    assert sorted(stored) == others and sorted(states) == others  # its state is not saved


def crash_postgres_for(stack: EmbeddedStack, seconds: float) -> threading.Thread:
    """SIGKILL PostgreSQL now; start it again (crash recovery) `seconds` later."""
    stack.postgres.kill()

    def restart() -> None:
        time.sleep(seconds)
        stack.postgres.start()

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


@pytest.mark.parametrize("worker", WORKER_NAMES)
def test_a_postgresql_crash_is_waited_out_and_loses_nothing(
    own_stack: EmbeddedStack, worker: WorkerName
) -> None:
    settings = fresh_settings(own_stack, worker)
    citizens = pins(COUNT, offset=next(_runs))
    batch = inputs(settings, worker, citizens)
    built = BUILD[worker](settings)
    if worker == "validator":
        batch = [pinless(m) for m in batch]  # births without a PIN: PostgreSQL allocates them
    restarting = crash_postgres_for(own_stack, 3)
    try:
        run(built, batch)
    finally:
        restarting.join()
    assert dead_letters(settings) == []
    assert delivered(settings, worker) == COUNT


def pinless(message: InboundMessage) -> InboundMessage:
    event = EVENTS.decode(message.value).model_copy(update={"subject_pin": None})
    return signed(
        InboundMessage(message.topic, message.partition, message.offset, None, EVENTS.encode(event))
    )


@pytest.mark.parametrize("worker", WORKER_NAMES)
def test_a_closed_worker_leaves_no_connection_open(
    stack: EmbeddedStack, worker: WorkerName
) -> None:
    settings = fresh_settings(stack, worker)
    built = BUILD[worker](settings)
    run(built, inputs(settings, worker, pins(3, offset=next(_runs))))  # runs, then closes
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (f"popsync-{worker}",),
        ).fetchall()
    assert rows == [(0,)]
