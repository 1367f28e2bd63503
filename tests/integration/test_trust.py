"""The trust boundary on the real broker and PostgreSQL: only a known registry, within its
authority, changes a citizen.

A death is forged four ways — a plain Kafka producer with no signature, a signature from a
key no directory knows, a civil-status key of another province, a residence registry's
valid key — and each is parked with its own reason while the citizen stays alive; the
genuine registry's signed death applies, and the history names who signed it. A key is
rotated and then revoked while events signed with it are in flight: none is lost.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from popsync.adapters.kafka.producer import BatchProducer, producer_config
from popsync.adapters.postgres.publishers import (
    NewKey,
    revoke_key,
    rotate,
)
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.publishers import dev_signer
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.domain.pin import make_pin
from popsync.ops import dlq
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from popsync.trust.signing import Signer
from tests.builders import birth, death, move
from tests.polling import eventually, read_until
from tests.signing import register_publisher

pytestmark = pytest.mark.integration

NAME = "trust"
LETTERS = Codec(m.DeadLetter)
EVENTS = Codec(m.RegistryEvent)
_serials = itertools.count(660_000)
OPERATOR = "integration-test"


@pytest.fixture(scope="module")
def own_pipeline(stack: EmbeddedStack) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    settings = stack.isolated_settings(NAME, trust={"directory_refresh_seconds": 1})
    stack.prepare(settings)
    started = [stack.start_worker(name, settings, tag=f"-{NAME}") for name in WORKER_NAMES]
    try:
        yield settings, started
    finally:
        for worker in started:
            worker.stop()
            stack.workers.remove(worker)


def new_pin() -> str:
    return make_pin("079", "F", 1990, next(_serials)).value


def connect(settings: Settings) -> psycopg.Connection[Any]:
    return psycopg.connect(settings.postgres.dsn.get_secret_value(), autocommit=True)


def send(settings: Settings, signer: Signer | None, *events: m.RegistryEvent) -> None:
    producer = BatchProducer(settings.kafka)
    publisher = Publisher(producer, settings.topics.registry_events, signer)
    for event in events:
        publisher.send((event.subject_pin or "").encode(), event)
    publisher.flush()
    producer.close()


def life(settings: Settings, pin: str) -> tuple[Any, ...] | None:
    with connect(settings) as conn:
        return conn.execute(
            "SELECT life_status, version FROM citizens WHERE pin = %s", (pin,)
        ).fetchone()


def reasons_of(settings: Settings, event_ids: set[str]) -> dict[str, str]:
    def found(values: list[bytes | None]) -> dict[str, str]:
        letters = (LETTERS.decode(value) for value in values)
        return {x.event_id: x.reason_code for x in letters if x.event_id in event_ids}

    topic = settings.topics.dead_letters
    return found(read_until(settings, topic, lambda v: len(found(v)) >= len(event_ids), 60))


def test_forged_deaths_are_parked_each_for_its_reason_and_the_genuine_one_applies(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    civil_status = dev_signer(m.SourceRegistry.CIVIL_STATUS)  # speaks for every province
    pin = new_pin()
    send(settings, civil_status, birth(pin))
    assert eventually(lambda: life(settings, pin) == ("ALIVE", 1))

    # 1. A plain Kafka producer: no popsync tooling, no signature.
    unsigned = death(pin, date(2024, 1, 1))
    raw = Producer(producer_config(settings.kafka))
    raw.produce(settings.topics.registry_events, key=pin.encode(), value=EVENTS.encode(unsigned))
    raw.flush(30)
    # 2. Signed, by a key no directory knows.
    unknown = death(pin, date(2024, 1, 2))
    send(settings, Signer.generate("civil-status-79", "forged-k1"), unknown)
    # 3. A real civil-status registry's key, out of its province (Hà Nội signs for 79).
    ha_noi = register_publisher(settings, "civil-status-01", m.SourceRegistry.CIVIL_STATUS, ["01"])
    out_of_scope = death(pin, date(2024, 1, 3))
    send(settings, ha_noi, out_of_scope)
    # 4. A residence registry's valid key signing a death.
    by_residence = death(pin, date(2024, 1, 4))
    send(settings, dev_signer(m.SourceRegistry.RESIDENCE), by_residence)

    forged = {e.event_id: e for e in (unsigned, unknown, out_of_scope, by_residence)}
    assert reasons_of(settings, set(forged)) == {
        unsigned.event_id: "UNSIGNED",
        unknown.event_id: "SIGNER_UNKNOWN",
        out_of_scope.event_id: "PROVINCE_OUT_OF_SCOPE",
        by_residence.event_id: "SOURCE_NOT_SIGNER",
    }
    assert life(settings, pin) == ("ALIVE", 1)  # none of them touched the citizen

    genuine = death(pin, date(2024, 2, 1))
    send(settings, civil_status, genuine)
    assert eventually(lambda: life(settings, pin) == ("DECEASED", 2))
    with connect(settings) as conn:
        signed_by = conn.execute(
            "SELECT publisher_id, key_id FROM citizen_history WHERE pin = %s ORDER BY version",
            (pin,),
        ).fetchall()
    assert signed_by == [("dev-civil-status", "dev-civil-status-k1")] * 2
    for worker in workers:
        assert worker.alive, f"{worker.name} stopped; see {worker.log_path}"


def test_a_key_is_rotated_then_revoked_and_no_event_in_flight_is_lost(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    old = register_publisher(settings, "civil-status-48", m.SourceRegistry.CIVIL_STATUS, ["48"])
    births = [birth(new_pin()).model_copy(update={"source_province": "48"}) for _ in range(6)]
    pins = [event.subject_pin or "" for event in births]

    # Rotation: the new key is registered; the old one keeps its window.
    new = Signer.generate("civil-status-48", "civil-status-48-k2")
    with connect(settings) as conn:
        rotate(conn, "civil-status-48", NewKey(new.key_id, new.public_key), OPERATOR)
    send(settings, old, births[0], births[1])  # signed before the switch, still in flight
    send(settings, new, births[2])
    assert eventually(lambda: all(life(settings, p) for p in pins[:3]))

    # Revocation: what the old key signs from now on is parked, and kept.
    with connect(settings) as conn:
        revoke_key(conn, old.key_id, OPERATOR)
    time.sleep(1.5)  # a revocation is seen at the next re-read of the directory (every 1 s here)
    send(settings, old, births[3])
    send(settings, new, births[4])
    assert reasons_of(settings, {births[3].event_id}) == {births[3].event_id: "KEY_REVOKED"}
    assert eventually(lambda: life(settings, pins[4]) is not None)
    assert life(settings, pins[3]) is None
    # The registry signs it again with its current key: nothing was lost.
    send(settings, new, births[3], births[5])
    assert eventually(lambda: all(life(settings, p) for p in pins))
    for worker in workers:
        assert worker.alive, f"{worker.name} stopped; see {worker.log_path}"


def test_a_replayed_dead_letter_still_verifies(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    """Parked for a reason that passes later (dated in the future), a signed event keeps
    its signature through the dead-letter topic and `dlq replay`."""
    settings, _ = own_pipeline
    civil_status = dev_signer(m.SourceRegistry.CIVIL_STATUS)
    pin = new_pin()
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    early = move(pin, tomorrow.date())  # a residence event dated tomorrow: retryable
    send(settings, civil_status, birth(pin))
    send(settings, dev_signer(m.SourceRegistry.RESIDENCE), early)
    reason = reasons_of(settings, {early.event_id})[early.event_id]
    assert reason in ("OCCURRED_IN_FUTURE", "DATE_IN_FUTURE")
    selection = dlq.Selection(reasons=frozenset({reason}))
    found = dlq.scan(settings, selection)
    headers = dict(dlq.original_headers(found.letters[-1].letter))
    assert "popsync.signature" in headers and "popsync.key-id" in headers
