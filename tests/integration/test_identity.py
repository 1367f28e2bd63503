"""PIN allocation on the real pipeline and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.pins import PostgresPinAllocator
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.domain.allocation import AllocationRequest
from popsync.domain.pin import make_pin
from popsync.ops.publish import Publisher
from popsync.settings import Settings
from tests.builders import birth, citizen, death, move, publish, registry_event
from tests.polling import Query, eventually, read_until
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

_numbers = itertools.count(1)
# PINs of their own in the shared `pipeline` database: test_pipeline's `new_pin` counts from 100.
_serials = itertools.count(700)


def new_pin() -> str:
    return make_pin("079", "F", 1990, next(_serials)).value


NOTICES = Codec(m.IdentityAssigned)


def pinless_birth(province: str = "79", year: int = 2024) -> m.RegistryEvent:
    number = next(_numbers)
    moment = datetime(year, 3, 4, 9, tzinfo=UTC)
    return m.RegistryEvent(
        event_id=f"identity-birth-{number}-{time.time_ns()}",
        event_type=m.EventType.BIRTH_REGISTERED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        source_province=province,
        subject_pin=None,
        occurred_at=moment,
        recorded_at=moment,
        source_sequence=number,
        payload=m.BirthRegistered(
            full_name="Đặng Thị Mai",
            birth_date=date(year, 3, 4),
            sex=m.Sex.F,
            birthplace_province=province,
            registration_number=f"KS-{number}",
        ),
    )


@pytest.fixture(scope="module")
def identity(stack: EmbeddedStack) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    """A pipeline of its own, with two validators allocating at once."""
    settings = stack.isolated_settings("identity")
    stack.prepare(settings)
    names = ("validator", "validator", "synchronizer")
    workers = [stack.start_worker(n, settings, tag=f"-identity{i}") for i, n in enumerate(names)]
    try:
        yield settings, workers
    finally:
        for worker in workers:
            worker.stop()
            stack.workers.remove(worker)


def stored_pins(settings: Settings, event_ids: list[str]) -> dict[str, str]:
    """birth event id -> PIN of the citizen that birth created in the store."""
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        rows = conn.execute(
            "SELECT h.event_id, c.pin FROM citizens c JOIN citizen_history h USING (pin)"
            " WHERE h.version = 1 AND h.event_id = ANY(%s)",
            (event_ids,),
        ).fetchall()
    return dict(rows)


def read_notices(settings: Settings, wanted: int, timeout: float = 60) -> list[m.IdentityAssigned]:
    topic = settings.topics.identity_assigned
    values = read_until(settings, topic, lambda v: len(v) >= wanted, timeout)
    return [NOTICES.decode(value) for value in values]


def test_births_without_a_pin_get_unique_pins_from_two_validators_and_replays_keep_them(
    identity: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = identity
    births = [pinless_birth() for _ in range(300)]
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    # Keyed by registration number: the births spread over every partition, hence
    # over both validators.
    publisher.publish((b.payload.registration_number.encode(), b) for b in births)  # type: ignore[union-attr]
    ids = [b.event_id for b in births]
    pins = eventually(lambda: (p := stored_pins(settings, ids)) and len(p) == len(ids) and p, 90)
    assert pins and len(pins) == 300
    assert len(set(pins.values())) == 300, "two births got the same PIN"
    assert all(pin.startswith("079324") for pin in pins.values())  # HCMC, female 2000s, 2024

    # The same births again (a registry re-send): the same PINs, no new citizen.
    publisher.publish((b.payload.registration_number.encode(), b) for b in births[:50])  # type: ignore[union-attr]
    time.sleep(3)
    assert stored_pins(settings, ids) == pins
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        row = conn.execute("SELECT count(*) FROM pin_allocations").fetchone()
    assert row == (300,)

    notices = read_notices(settings, wanted=350)
    assert {(n.event_id, n.pin) for n in notices} == set(pins.items())
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"


def test_concurrent_allocators_never_hand_out_one_pin_twice(stack: EmbeddedStack) -> None:
    settings = stack.isolated_settings("allocrace")
    stack.prepare(settings)
    results: list[dict[str, str]] = []

    def allocate(worker: int) -> None:
        async def run() -> None:
            db = Database(settings.postgres)
            allocator = PostgresPinAllocator(db)
            try:
                for batch in range(20):
                    requests = [
                        AllocationRequest(f"w{worker}-b{batch}-e{i}", "001199") for i in range(25)
                    ]
                    # Every worker also claims the same shared events: one PIN each.
                    requests += [AllocationRequest(f"shared-{batch}", "001199")]
                    results.append(dict(await allocator.allocate(requests)))
            finally:
                await db.close()

        asyncio.run(run())

    threads = [threading.Thread(target=allocate, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    by_event: dict[str, set[str]] = {}
    for result in results:
        for event_id, pin in result.items():
            by_event.setdefault(event_id, set()).add(pin)
    assert len(by_event) == 4 * 20 * 25 + 20
    assert all(len(pins) == 1 for pins in by_event.values()), "an event got two PINs"
    all_pins = [next(iter(pins)) for pins in by_event.values()]
    assert len(set(all_pins)) == len(all_pins), "one PIN went to two events"


def test_a_court_annulment_reactivates_a_citizen_declared_dead(
    publisher: Publisher, query: Query
) -> None:
    pin = new_pin()
    died, moved = date(2024, 2, 1), date(2024, 5, 1)
    publish(publisher, birth(pin), death(pin, died), move(pin, moved))
    row = eventually(lambda: citizen(query, pin, 3))
    assert row is not None and row[3] == "DECEASED"
    annul = m.DeathAnnulled(
        death_registration_number="KT-1",
        court_decision_number="7/2024/QĐ-TA",
        decision_date=date(2024, 9, 1),
    )
    publish(
        publisher,
        registry_event(
            pin, annul, m.EventType.DEATH_ANNULLED, m.SourceRegistry.CIVIL_STATUS, date(2024, 9, 1)
        ),
    )
    row = eventually(lambda: citizen(query, pin, 4))
    assert row is not None and row[3] == "ALIVE"
    assert row[5]["death_date"] is None
    assert row[5]["permanent_residence"]["commune_code"] == "26734"  # the blocked move applies
    conflicts = eventually(
        lambda: query(
            "SELECT conflict_code FROM citizen_conflicts"
            " WHERE pin = %s AND resolved_at IS NOT NULL",
            pin,
        )
    )
    assert conflicts == [("SUBJECT_DECEASED",)]
    history = query(
        "SELECT changed_fields FROM citizen_history WHERE pin = %s AND version = 4", pin
    )
    assert set(history[0][0]) == {"life_status", "death_date", "permanent_residence"}


def test_an_event_naming_a_citizen_by_its_old_cmnd_updates_that_citizen(
    publisher: Publisher, query: Query
) -> None:
    pin, cmnd = new_pin(), f"0{time.time_ns() % 10**8:08d}"
    card = m.IdCardIssued(
        card=m.IdCard(card_number=pin, issue_date=date(2021, 6, 1), issuing_authority="Bộ Công an"),
        previous_id_number=cmnd,
    )
    publish(
        publisher,
        birth(pin),
        registry_event(
            pin, card, m.EventType.ID_CARD_ISSUED, m.SourceRegistry.ID_CARD, date(2021, 6, 1)
        ),
    )
    assert eventually(lambda: citizen(query, pin, 2)) is not None
    by_cmnd = move(pin, date(2022, 2, 2), commune="26737").model_copy(
        update={"subject_pin": None, "subject_legacy_id": cmnd}
    )
    publisher.publish([(cmnd.encode(), by_cmnd)])
    row = eventually(lambda: citizen(query, pin, 3))
    assert row is not None
    assert row[5]["permanent_residence"]["commune_code"] == "26737"
    aliases = query("SELECT pin, kind FROM citizen_aliases WHERE alias = %s", cmnd)
    assert aliases == [(pin, "CMND")]
