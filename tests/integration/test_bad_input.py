"""Every kind of bad input of the catalogue, through the real broker and the real validator.

Each kind must arrive on the dead-letter topic with its reason code and its original key
and value byte for byte; good events sent in between must still reach PostgreSQL, and the
validator must still be running afterwards.

The test runs its own three workers, topics and database on the session's broker and
PostgreSQL (`stack`), not the shared `pipeline`: its 80-odd dead letters on the shared
dead-letter topic would be what `test_pipeline`'s reader, which takes the first dead
letters it finds from offset 0, gets instead of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.domain.reasons import REASONS
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from popsync.topology import MAX_EVENT_BYTES
from tests.builders import Citizens, bad_messages
from tests.polling import eventually, read_until

pytestmark = pytest.mark.integration

NAME = "badinput"
_serials = itertools.count(700_000)  # PINs of their own: other tests use other serials
# "Absurdly long" values, smaller than in the unit test (the largest message has a test
# of its own below).
HUGE = 200_000
GOOD_EVERY = 20  # a good event after every so many bad ones

Sent = tuple[bytes | None, bytes | None]


@pytest.fixture(scope="module")
def own_pipeline(stack: EmbeddedStack) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    """Topics, groups and database named `badinput`, and the three workers."""
    settings = stack.isolated_settings(NAME)
    stack.prepare(settings)
    started = [stack.start_worker(name, settings, tag=f"-{NAME}") for name in WORKER_NAMES]
    try:
        yield settings, started
    finally:
        for worker in started:
            worker.stop()
            stack.workers.remove(worker)  # the session's check is about its own workers


def read_dead_letters(
    settings: Settings, wanted: set[Sent], timeout: float
) -> dict[Sent, m.DeadLetter]:
    """Dead letters whose original (key, value) is in `wanted`, read from every partition."""
    codec = Codec(m.DeadLetter)

    def found(values: list[bytes | None]) -> dict[Sent, m.DeadLetter]:
        letters = (codec.decode(value) for value in values)
        return {
            (letter.original_key, letter.original_value): letter
            for letter in letters
            if (letter.original_key, letter.original_value) in wanted
        }

    topic = settings.topics.dead_letters
    return found(read_until(settings, topic, lambda v: len(found(v)) >= len(wanted), timeout))


def test_every_kind_of_bad_input_is_dead_lettered_and_good_events_flow_on(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    citizens = Citizens(_serials, datetime.now(UTC), huge=HUGE)
    bad = bad_messages(citizens)
    assert len({(b.key, b.value) for b in bad}) == len(bad)  # each one can be told apart
    producer = BatchProducer(settings.kafka)
    publisher = Publisher(producer, settings.topics.registry_events)
    good_pins = []
    for i, message in enumerate(bad):
        publisher.send_raw(message.key, message.value)
        if i % GOOD_EVERY == 0:
            good = citizens.birth()
            assert good.subject_pin is not None
            publisher.send(good.subject_pin.encode(), good)
            good_pins.append(good.subject_pin)
    publisher.flush()
    producer.close()

    letters = read_dead_letters(settings, {(b.key, b.value) for b in bad}, timeout=60)

    missing = [b.kind for b in bad if (b.key, b.value) not in letters]
    assert not missing, f"not dead-lettered: {missing}"
    for b in bad:
        letter = letters[(b.key, b.value)]
        assert (b.kind, letter.reason_code) == (b.kind, b.reason)
        assert letter.reason_code in REASONS
        assert letter.stage == "validator"
        assert letter.original_topic == settings.topics.registry_events
    dsn = settings.postgres.dsn.get_secret_value()

    def stored() -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute(
                b"SELECT pin, version FROM citizens WHERE pin = ANY(%s)", (good_pins,)
            ).fetchall()

    rows = eventually(lambda: len(stored()) == len(good_pins) and stored())
    assert sorted(rows) == sorted((pin, 1) for pin in good_pins)
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"


def test_the_largest_event_a_registry_may_send_is_parked_whole(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    key = b"079190000000"
    value = b"\xc3\x01" + bytes(range(256)) * ((MAX_EVENT_BYTES - 4096) // 256)
    producer = BatchProducer(settings.kafka)
    Publisher(producer, settings.topics.registry_events).send_raw(key, value)
    producer.flush_sync()
    producer.close()
    letters = read_dead_letters(settings, {(key, value)}, timeout=60)
    assert letters[(key, value)].reason_code == "UNKNOWN_SCHEMA"
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"
