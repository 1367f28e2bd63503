"""Blast radius on the real broker and PostgreSQL: one source, one message at fault.

- Per source: a registry flooding the topic with bad events is quarantined while another
  registry's events, interleaved with them, all land; nothing of either is lost, and once
  released the quarantined source's parked events are replayed.
- Per size: an event far over the limit (it reaches the broker compressed) is parked in
  the small form, listed by `popsync dlq list` with its SHA-256, and the good events after
  it on the same partition all land.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.ops import dlq, sources
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from popsync.trust.signing import Signer
from tests.builders import Citizens, envelope
from tests.polling import eventually, read_until
from tests.signing import DEV_SIGNERS, register_publisher, signature_headers

pytestmark = pytest.mark.integration

NAME = "blast"
LETTERS = Codec(m.DeadLetter)
_serials = itertools.count(640_000)
A, B, C = "01", "79", "48"  # provinces of three civil-status registries, each its own publisher


@pytest.fixture(scope="module")
def own_pipeline(stack: EmbeddedStack) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    settings = stack.isolated_settings(
        NAME,
        dead_letter_limit={"quarantine_refresh_seconds": 1},
        trust={"directory_refresh_seconds": 1},
    )
    stack.prepare(settings)
    started = [stack.start_worker(name, settings, tag=f"-{NAME}") for name in WORKER_NAMES]
    try:
        yield settings, started
    finally:
        for worker in started:
            worker.stop()
            stack.workers.remove(worker)


def stored_pins(settings: Settings, pins: list[str]) -> set[str]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        rows = conn.execute("SELECT pin FROM citizens WHERE pin = ANY(%s)", (pins,)).fetchall()
    return {row[0] for row in rows}


def letters_of(settings: Settings, event_ids: set[str], timeout: float = 60) -> list[m.DeadLetter]:
    """The dead letters (the latest per original offset) of the events `event_ids`."""

    def mine(values: list[bytes | None]) -> list[m.DeadLetter]:
        decoded = (LETTERS.decode(value) for value in values)
        return [letter for letter in decoded if letter.event_id in event_ids]

    def enough(values: list[bytes | None]) -> bool:
        return len({x.event_id for x in mine(values)}) >= len(event_ids)

    return mine(read_until(settings, settings.topics.dead_letters, enough, timeout))


def quarantine_of(settings: Settings, source: str) -> tuple[Any, ...] | None:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(
            "SELECT reason, released_at FROM source_quarantine WHERE source = %s", (source,)
        ).fetchone()


def registry(settings: Settings, province: str) -> Signer:
    """The civil-status registry of `province`: a publisher of its own, with its key."""
    return register_publisher(
        settings, f"civil-status-{province}", m.SourceRegistry.CIVIL_STATUS, [province]
    )


def send(settings: Settings, messages: list[tuple[bytes, m.RegistryEvent]], signer: Signer) -> None:
    producer = BatchProducer(settings.kafka)
    publisher = Publisher(producer, settings.topics.registry_events, signer)
    for key, event in messages:
        publisher.send(key, event)
    publisher.flush()
    producer.close()


def test_a_flooding_source_is_quarantined_and_the_others_all_land(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    citizens = Citizens(_serials, datetime.now(UTC))
    bad = [from_province(citizens, A) for _ in range(1000)]  # keyed wrongly
    good = [from_province(citizens, B) for _ in range(1000)]
    producer = BatchProducer(settings.kafka)
    topic = settings.topics.registry_events
    registry_a = Publisher(producer, topic, registry(settings, A))
    registry_b = Publisher(producer, topic, registry(settings, B))
    for bad_one, good_one in zip(bad, good, strict=True):  # interleaved
        registry_a.send(b"not-the-pin", bad_one)
        registry_b.send(pin_key(good_one), good_one)
    producer.flush_sync()
    producer.close()

    good_pins = [event.subject_pin or "" for event in good]
    landed = eventually(lambda: stored_pins(settings, good_pins) == set(good_pins), timeout=120)
    assert landed, f"{len(stored_pins(settings, good_pins))} of {len(good)} of B landed"
    assert quarantine_of(settings, f"civil-status-{A}") == ("KEY_PIN_MISMATCH", None)
    assert quarantine_of(settings, f"civil-status-{B}") is None
    letters = letters_of(settings, {event.event_id for event in bad})
    reasons = Counter({x.event_id: x.reason_code for x in letters}.values())
    assert sum(reasons.values()) == len(bad)  # nothing of A lost: each one parked
    assert set(reasons) == {"KEY_PIN_MISMATCH", "SOURCE_QUARANTINED"}
    assert reasons["KEY_PIN_MISMATCH"] >= 200  # the limit: 200 in a row
    for worker in workers:
        assert worker.alive, f"{worker.name} stopped; see {worker.log_path}"


def test_a_released_source_flows_again_and_its_parked_events_are_replayed(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    citizens = Citizens(_serials, datetime.now(UTC))
    bad = [from_province(citizens, C) for _ in range(250)]
    held = [from_province(citizens, C) for _ in range(20)]  # valid, sent meanwhile
    signer = registry(settings, C)
    send(settings, [(b"not-the-pin", event) for event in bad], signer)
    source = f"civil-status-{C}"
    assert eventually(lambda: quarantine_of(settings, source), timeout=60)
    send(settings, [(pin_key(event), event) for event in held], signer)
    held_ids = {event.event_id for event in held}
    parked = letters_of(settings, held_ids)
    assert {x.reason_code for x in parked} == {"SOURCE_QUARANTINED"}

    out = io.StringIO()
    assert sources.release_source(settings, source, "integration-test", out) == 0
    assert "released civil-status-48" in out.getvalue()
    assert sources.release_source(settings, source, "integration-test", out) == 1  # once
    selection = dlq.Selection(
        reasons=frozenset({"SOURCE_QUARANTINED"}), sources=frozenset({source})
    )
    report = dlq.replay(settings, selection, out=io.StringIO(), progress=False)
    assert report.replayed == report.selected >= len(held)

    held_pins = [event.subject_pin or "" for event in held]
    assert eventually(lambda: stored_pins(settings, held_pins) == set(held_pins), timeout=60)
    listing = io.StringIO()
    sources.list_sources(settings, listing)
    assert f"{source}  released" in listing.getvalue()
    for worker in workers:
        assert worker.alive, f"{worker.name} stopped; see {worker.log_path}"


def test_an_event_far_over_the_limit_is_parked_small_and_the_partition_flows_on(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    citizens = Citizens(_serials, datetime.now(UTC))
    good = [from_province(citizens, B) for _ in range(20)]
    key = pin_key(good[0])  # the same key: the same partition as the good events after it
    value = b"\xc3\x01" + b"\x00" * (5 * 1024 * 1024)  # 5 MiB, compresses to almost nothing
    # A registry's producer allowed to send it (ours refuses it: `popsync publish`).
    producer = BatchProducer(settings.kafka, **{"message.max.bytes": 8 * 1024 * 1024})
    publisher = Publisher(producer, settings.topics.registry_events, DEV_SIGNERS)
    publisher.send_raw(key, value, signature_headers(key, value))
    for event in good:
        publisher.send(pin_key(event), event)
    publisher.flush()
    producer.close()

    pins = [event.subject_pin or "" for event in good]
    assert eventually(lambda: stored_pins(settings, pins) == set(pins), timeout=60)
    digest = hashlib.sha256(value).hexdigest()
    out = io.StringIO()
    selection = dlq.Selection(reasons=frozenset({"EVENT_TOO_LARGE"}))
    eventually(
        lambda: (
            dlq.list_dead_letters(settings, selection, out, timeout=30) == 0
            and digest in out.getvalue()
        ),
        timeout=30,
    )
    assert f"EVENT_TOO_LARGE  {len(value)} bytes  sha256 {digest}" in out.getvalue()
    for worker in workers:
        assert worker.alive, f"{worker.name} stopped; see {worker.log_path}"


def from_province(citizens: Citizens, province: str) -> m.RegistryEvent:
    """A birth registered by the civil-status registry of `province`."""
    return envelope(citizens.birth(), source_province=province)


def pin_key(event: m.RegistryEvent) -> bytes:
    return (event.subject_pin or "").encode()
