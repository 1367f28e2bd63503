"""Every worker's /metrics, /healthz and /readyz, scraped over HTTP after a known stream.

The test runs its own three workers, topics and database (`metrics`) on the session's
broker and PostgreSQL, so that its counters count exactly its own stream.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.dev.demo import Expectation, expect
from popsync.dev.simulate.generator import SimulatedMessage, simulate
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.domain.pin import make_pin
from popsync.domain.provinces import resolve_province
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings, WorkerName
from tests.builders import birth, death, move
from tests.polling import eventually
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

NAME = "metrics"
CITIZENS = 150
SEED = 5151

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def scrape(worker: WorkerProcess) -> Samples:
    status, text = get(worker.metrics_url)
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def by_label(samples: Samples, name: str, label: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (n, labels), value in samples.items():
        if n == name and value:
            counts[dict(labels)[label]] += int(value)
    return counts


@pytest.fixture(scope="module")
def run(stack: EmbeddedStack) -> Iterator[tuple[Settings, dict[WorkerName, WorkerProcess]]]:
    settings = stack.isolated_settings(NAME)
    stack.prepare(settings)
    workers = {name: stack.start_worker(name, settings, tag=f"-{NAME}") for name in WORKER_NAMES}
    try:
        yield settings, workers
    finally:
        for worker in workers.values():
            worker.stop()
            stack.workers.remove(worker)


@pytest.fixture(scope="module")
def converged(
    run: tuple[Settings, dict[WorkerName, WorkerProcess]],
) -> tuple[Expectation, dict[WorkerName, Samples]]:
    """Publish a known stream; the workers' metrics once everything is counted."""
    settings, workers = run
    now = datetime.now(UTC)
    messages = simulate(CITIZENS, seed=SEED, now=now)
    # The simulator's stories fold without conflicts: add one that surfaces a conflict.
    pin = make_pin("079", "F", 1990, 999_001).value  # a serial the simulator does not use
    story = [birth(pin), death(pin, date(2020, 1, 1)), move(pin, date(2021, 1, 1))]
    messages += [SimulatedMessage(pin.encode(), event, None) for event in story]
    skew = timedelta(seconds=settings.processing.future_skew_seconds)
    expected = expect(messages, now, skew)
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    publisher.publish((message.key, message.event) for message in messages)

    def counted() -> dict[WorkerName, Samples] | None:
        try:
            scraped = {name: scrape(worker) for name, worker in workers.items()}
        except urllib.error.URLError:  # a worker still starting
            return None
        sync = scraped["synchronizer"]
        written = total(sync, "popsync_store_rows_written_total", table="citizen_history")
        consumed = total(scraped["validator"], "popsync_events_consumed_total")
        surfaced = total(sync, "popsync_conflicts_total")
        stored_conflicts = total(
            sync, "popsync_store_rows_written_total", table="citizen_conflicts"
        )
        done = (
            written == expected.history_rows
            and consumed == expected.published
            and surfaced >= expected.conflicts
            and stored_conflicts >= surfaced
        )
        return scraped if done else None

    scraped = eventually(counted, timeout=90)
    assert scraped, "the pipeline did not process the whole stream in time"
    return expected, scraped


def test_validator_counts_every_event_once(
    converged: tuple[Expectation, dict[WorkerName, Samples]],
    run: tuple[Settings, dict[WorkerName, WorkerProcess]],
) -> None:
    expected, scraped = converged
    settings, _ = run
    validator = scraped["validator"]
    consumed = total(
        validator,
        "popsync_events_consumed_total",
        worker="validator",
        topic=settings.topics.registry_events,
    )
    validated = total(validator, "popsync_events_validated_total")
    parked = total(validator, "popsync_events_dead_lettered_total", stage="validator")
    assert consumed == expected.published
    assert validated + parked == expected.published
    assert parked == expected.invalid > 0
    assert by_label(validator, "popsync_events_dead_lettered_total", "reason") == expected.reasons


def test_synchronizer_counts_its_merges_and_the_stores_rows(
    converged: tuple[Expectation, dict[WorkerName, Samples]],
    run: tuple[Settings, dict[WorkerName, WorkerProcess]],
) -> None:
    expected, scraped = converged
    settings, _ = run
    sync = scraped["synchronizer"]
    valid = expected.published - expected.invalid
    assert total(sync, "popsync_events_consumed_total", worker="synchronizer") == valid
    assert total(sync, "popsync_updates_applied_total") == expected.history_rows
    assert total(sync, "popsync_duplicates_skipped_total", worker="synchronizer") == (
        expected.duplicates
    )
    rows = total(sync, "popsync_store_rows_written_total", table="citizen_history")
    assert rows == expected.history_rows
    # Updates written, each observed once, from the event's recorded_at.
    latency = total(sync, "popsync_event_to_store_seconds_count")
    assert latency == expected.history_rows
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE resolved_at IS NULL) FROM citizen_conflicts"
        ).fetchone()
    assert row is not None
    conflict_rows, open_conflicts = row
    assert open_conflicts == expected.conflicts >= 1
    assert total(sync, "popsync_conflicts_total", conflict_code="SUBJECT_DECEASED") >= 1
    # Each conflict surfaced once (a resolved one stays a row, with resolved_at).
    assert total(sync, "popsync_conflicts_total") == conflict_rows
    assert total(sync, "popsync_store_rows_written_total", table="citizen_conflicts") >= (
        conflict_rows
    )


def test_lag_freshness_and_probes(
    run: tuple[Settings, dict[WorkerName, WorkerProcess]],
    converged: tuple[Expectation, dict[WorkerName, Samples]],
) -> None:
    settings, workers = run
    partitions = settings.topics.partitions
    inputs: dict[WorkerName, list[str]] = {
        "validator": [settings.topics.registry_events],
        "synchronizer": [settings.topics.validated_events],
    }

    def caught_up() -> dict[WorkerName, Samples] | None:
        scraped = {name: scrape(worker) for name, worker in workers.items()}
        for name, samples in scraped.items():
            lags = {
                (dict(labels)["topic"], dict(labels)["partition"]): value
                for (n, labels), value in samples.items()
                if n == "popsync_consumer_lag_messages"
            }
            wanted = {(t, str(p)) for t in inputs[name] for p in range(partitions)}
            if set(lags) != wanted or any(lags.values()):
                return None
        return scraped

    scraped = eventually(caught_up, timeout=30)
    assert scraped, "lag gauges missing or not 0 once the stream was processed"
    for name, worker in workers.items():
        assert total(scraped[name], "popsync_worker_up", worker=name) == 1
        assert eventually(lambda w=worker: get(f"{w.base_url}/readyz")[0] == 200, timeout=10)
        assert total(scrape(worker), "popsync_worker_ready", worker=name) == 1
        assert get(f"{worker.base_url}/healthz") == (200, "alive\n")
        assert get(f"{worker.base_url}/nothing-here")[0] == 404

    freshness = [
        dict(labels)
        for (n, labels), _ in scraped["validator"].items()
        if n == "popsync_last_event_recorded_timestamp_seconds"
    ]
    assert freshness
    sources = {s.value for s in m.SourceRegistry}
    for labels in freshness:
        assert labels["source_registry"] in sources
        assert resolve_province(labels["province"]).current.code == labels["province"]
        assert not re.search(r"\d{12}", "".join(labels.values()))
    newest = max(v for (n, _), v in scraped["validator"].items() if n.startswith("popsync_last"))
    assert newest <= datetime.now(UTC).timestamp()


def test_no_label_value_looks_like_a_pin_or_a_name(
    converged: tuple[Expectation, dict[WorkerName, Samples]],
) -> None:
    _, scraped = converged
    for samples in scraped.values():
        for _, labels in samples:
            for key, value in labels:
                assert not re.search(r"\d{9,}", value), (key, value)
                assert value.isascii(), (key, value)
