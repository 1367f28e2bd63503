"""Sector records without a PIN on the real pipeline: matched by the validator against the
citizens in PostgreSQL, linked / reviewed / reported; then a review settled with the real
`popsync review` commands, the link reaching the citizen's history."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.publishers import dev_signer
from popsync.dev.stack import EmbeddedStack, WorkerProcess, settings_env
from popsync.domain.pin import make_pin, mask_pin
from popsync.identity.decisions import operator_event_id
from popsync.ops.publish import Publisher
from popsync.settings import Settings
from tests.polling import eventually, read_until
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

REVIEWS = Codec(m.MatchReview)
UNMATCHED = Codec(m.UnmatchedRecord)
KHAI = make_pin("079", "F", 1991, 101).value
HUNG = make_pin("001", "M", 1985, 102).value
HUNG_TWIN = make_pin("001", "M", 1985, 103).value


@pytest.fixture(scope="module")
def matching(stack: EmbeddedStack) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    """A pipeline of its own: database, topics and groups `matching`."""
    settings = stack.isolated_settings("matching")
    stack.prepare(settings)
    names = ("validator", "synchronizer")
    workers = [stack.start_worker(n, settings, tag="-matching") for n in names]
    try:
        yield settings, workers
    finally:
        for worker in workers:
            worker.stop()
            stack.workers.remove(worker)


def event(
    event_type: m.EventType,
    source: m.SourceRegistry,
    pin: str | None,
    day: date,
    payload: m.ContractModel,
) -> m.RegistryEvent:
    moment = datetime(day.year, day.month, day.day, 3, tzinfo=UTC)
    return m.RegistryEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        source_registry=source,
        source_province="79",
        subject_pin=pin,
        occurred_at=moment,
        recorded_at=moment + timedelta(hours=1),
        source_sequence=time.time_ns() % 10**12,
        payload=payload,
    )


def birth(pin: str, name: str, day: date, sex: m.Sex, province: str) -> m.RegistryEvent:
    payload = m.BirthRegistered(
        full_name=name,
        birth_date=day,
        sex=sex,
        birthplace_province=province,
        registration_number=f"KS-{pin[-3:]}",
    )
    return event(m.EventType.BIRTH_REGISTERED, m.SourceRegistry.CIVIL_STATUS, pin, day, payload)


def sector(name: str, born: date, sex: m.Sex, province: str, number: str) -> m.RegistryEvent:
    payload = m.SectorRecordRegistered(
        record_number=number,
        full_name=name,
        birth_date=born,
        sex=sex,
        birthplace_province=province,
    )
    return event(
        m.EventType.SECTOR_RECORD_REGISTERED,
        m.SourceRegistry.SOCIAL_INSURANCE,
        None,
        date(2024, 3, 1),
        payload,
    )


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def read_topic(settings: Settings, topic: str, codec: Codec, wanted: int) -> list[Any]:
    values = read_until(settings, topic, lambda v: len(v) >= wanted, timeout=30)
    return [codec.decode(value) for value in values]


def popsync(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "popsync.cli", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def history(settings: Settings, pin: str) -> list[tuple[Any, ...]]:
    return rows(
        settings,
        "SELECT version, event_id, event_type, source_registry, changed_fields"
        " FROM citizen_history WHERE pin = %s ORDER BY version",
        pin,
    )


def test_records_without_pin_are_linked_reviewed_or_reported_and_a_review_is_settled(
    matching: tuple[Settings, list[WorkerProcess]], tmp_path: Path
) -> None:
    settings, workers = matching
    # The operator links for the social-insurance registry, with a key of that kind.
    operator_key = tmp_path / "social-insurance.key"
    dev_signer(m.SourceRegistry.SOCIAL_INSURANCE).save(operator_key)
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    births = [
        birth(KHAI, "Nguyễn Thị Minh Khai", date(1991, 4, 12), m.Sex.F, "79"),
        birth(HUNG, "Trần Văn Hùng", date(1985, 9, 3), m.Sex.M, "01"),
        birth(HUNG_TWIN, "Trần Văn Hưng", date(1985, 9, 3), m.Sex.M, "01"),
    ]
    publisher.publish((e.subject_pin.encode(), e) for e in births if e.subject_pin)
    pins = [KHAI, HUNG, HUNG_TWIN]
    stored = "SELECT count(*) FROM citizens WHERE pin = ANY(%s)"
    assert eventually(lambda: rows(settings, stored, pins) == [(3,)], 60)

    # The sector database knows no PIN: it keys its records by its own number.
    typo = sector("Nguyen Thi Minh Khaj", date(1991, 4, 12), m.Sex.F, "79", "7910000001")
    twin = sector("Tran Van Hung", date(1985, 9, 3), m.Sex.M, "01", "0110000002")
    lost = sector("Phạm Đình Toàn", date(1972, 1, 1), m.Sex.M, "01", "0110000003")
    records = [typo, twin, lost]
    publisher.publish(
        (e.payload.record_number.encode(), e)  # type: ignore[union-attr]
        for e in records
    )
    decided = (
        "SELECT event_id, outcome, pin, decided_by FROM match_decisions WHERE event_id = ANY(%s)"
    )
    ids = [e.event_id for e in records]
    found = eventually(lambda: (r := rows(settings, decided, ids)) and len(r) == 3 and r, 60)
    assert found, "the validator did not decide every record"
    decisions = {event_id: (outcome, pin, by) for event_id, outcome, pin, by in found}
    assert decisions[typo.event_id] == ("LINKED", KHAI, "popsync")
    assert decisions[twin.event_id][0] == "REVIEW"
    assert decisions[lost.event_id] == ("UNMATCHED", None, "popsync")

    # Linked: the record joined the citizen's events, changing no field; that is its audit.
    linked = eventually(lambda: len(h := history(settings, KHAI)) == 2 and h, 60)
    assert linked and linked[1][1:] == (
        typo.event_id,
        "SECTOR_RECORD_REGISTERED",
        "SOCIAL_INSURANCE",
        [],
    )

    # Review: pending in the store with the original bytes, announced on the review topic.
    pending = rows(
        settings,
        "SELECT status, original_key FROM match_reviews WHERE review_id = %s",
        twin.event_id,
    )
    assert pending == [("PENDING", b"0110000002")]
    (notice,) = read_topic(settings, settings.topics.match_reviews, REVIEWS, 1)
    assert notice.review_id == twin.event_id
    assert {c.pin for c in notice.candidates} == {HUNG, HUNG_TWIN}
    (report,) = read_topic(settings, settings.topics.unmatched_records, UNMATCHED, 1)
    assert (report.event_id, report.record_number, report.reason) == (
        lost.event_id,
        "0110000003",
        "NO_CANDIDATE",
    )

    # The operator's side, as real commands.
    listed = popsync(settings, "review", "list")
    assert listed.returncode == 0, listed.stderr
    assert twin.event_id in listed.stdout and mask_pin(HUNG) in listed.stdout
    assert not re.search(r"[0-9]{12}", listed.stdout), "an unmasked PIN in the output"
    assert "Hùng" not in listed.stdout and "Hung" not in listed.stdout

    link_twin = ("review", "resolve", twin.event_id, "--link", HUNG, "--operator", "tester")
    unsigned = popsync(settings, *link_twin)
    assert unsigned.returncode == 2 and "--signing-key" in unsigned.stderr
    settled = popsync(settings, *link_twin, "--signing-key", str(operator_key))
    assert settled.returncode == 0, settled.stderr
    assert mask_pin(HUNG) in settled.stdout and HUNG not in settled.stdout

    # The link flows validator -> synchronizer -> store: the citizen's history shows it.
    link_id = operator_event_id(twin.event_id)
    audited = eventually(lambda: len(h := history(settings, HUNG)) == 2 and h, 60)
    assert audited and audited[1][1:] == (
        link_id,
        "SECTOR_RECORD_REGISTERED",
        "SOCIAL_INSURANCE",
        [],
    )
    assert history(settings, HUNG_TWIN)[1:] == []
    review_row = rows(
        settings,
        "SELECT status, pin, decided_by, resolution_event_id FROM match_reviews"
        " WHERE review_id = %s",
        twin.event_id,
    )
    assert review_row == [("RESOLVED", HUNG, "tester", link_id)]
    operator_decision = rows(
        settings,
        "SELECT outcome, method, pin, decided_by, review_id FROM match_decisions"
        " WHERE event_id = %s",
        link_id,
    )
    assert operator_decision == [("LINKED", "OPERATOR", HUNG, "tester", twin.event_id)]

    after = popsync(settings, "review", "list")
    assert after.returncode == 0 and twin.event_id not in after.stdout
    assert "no pending reviews" in after.stdout

    again = popsync(settings, *link_twin, "--signing-key", str(operator_key))
    assert again.returncode == 2 and "already RESOLVED" in again.stderr
    unknown = popsync(
        settings, "review", "resolve", "no-such-review", "--reject", "--operator", "tester"
    )
    assert unknown.returncode == 2 and "no review" in unknown.stderr

    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"
