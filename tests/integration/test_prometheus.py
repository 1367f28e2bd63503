"""A real Prometheus scraping the running workers: every target up, PromQL counts exact.

Skipped when no `prometheus` binary is installed (Debian: `apt-get install prometheus`),
unless POPSYNC_REQUIRE_PROMETHEUS=1 (or POPSYNC_CI=1; CI sets both): then it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.dev.demo import expect
from popsync.dev.embedded.prometheus import EmbeddedPrometheus, prometheus_binary
from popsync.dev.simulate.generator import simulate
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from tests.polling import eventually
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

NAME = "promscrape"
CITIZENS = 60
SEED = 4242


@pytest.fixture(scope="module")
def prometheus_path() -> str:
    binary = prometheus_binary()
    if binary is None:
        message = "no `prometheus` binary on PATH (apt-get install prometheus)"
        required = ("POPSYNC_REQUIRE_PROMETHEUS", "POPSYNC_CI")  # CI sets both
        if any(os.environ.get(variable) == "1" for variable in required):
            pytest.fail(f"{message}, and {' or '.join(required)} is 1")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def scraped(
    prometheus_path: str, stack: EmbeddedStack
) -> Iterator[tuple[Settings, list[WorkerProcess], EmbeddedPrometheus]]:
    settings = stack.isolated_settings(NAME)
    stack.prepare(settings)
    workers = [stack.start_worker(name, settings, tag=f"-{NAME}") for name in WORKER_NAMES]
    prometheus = EmbeddedPrometheus(
        stack.workdir / NAME,
        [(worker.name, worker.target) for worker in workers],
        binary=prometheus_path,
    )
    try:
        prometheus.start()
        yield settings, workers, prometheus
    finally:
        prometheus.stop()
        for worker in workers:
            worker.stop()
            stack.workers.remove(worker)


def test_prometheus_scrapes_every_worker_and_counts_a_known_stream(
    scraped: tuple[Settings, list[WorkerProcess], EmbeddedPrometheus],
) -> None:
    settings, workers, prometheus = scraped
    assert prometheus.wait_for_targets_up(len(workers), timeout=30), prometheus.active_targets()
    up = {
        result["metric"]["worker"]: result["value"][1]
        for result in prometheus.query('up{job="popsync"}')
    }
    assert up == {worker.name: "1" for worker in workers}

    now = datetime.now(UTC)
    messages = simulate(CITIZENS, seed=SEED, now=now)
    expected = expect(messages, now, timedelta(seconds=settings.processing.future_skew_seconds))
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    publisher.publish((message.key, message.event) for message in messages)

    checks = {
        'sum(popsync_events_consumed_total{job="popsync",worker="validator"})': expected.published,
        'sum(popsync_events_dead_lettered_total{job="popsync",stage="validator"})': (
            expected.invalid
        ),
        'sum(popsync_updates_applied_total{job="popsync"})': expected.history_rows,
        'sum(popsync_store_rows_written_total{job="popsync",table="citizen_history"})': (
            expected.history_rows
        ),
        'sum(popsync_event_to_store_seconds_count{job="popsync"})': expected.history_rows,
    }

    def counted() -> dict[str, float | None]:
        return {promql: prometheus.value(promql) for promql in checks}

    eventually(lambda: counted() == checks, timeout=60)
    assert counted() == checks
    # Each worker reports itself ready, and its lag through Prometheus is 0.
    ready = 'popsync_worker_ready{job="popsync"} == 1'
    assert eventually(lambda: len(prometheus.query(ready)) == len(workers), timeout=15)
    lag = 'sum(popsync_consumer_lag_messages{job="popsync"})'
    assert eventually(lambda: prometheus.value(lag) == 0, timeout=15)
