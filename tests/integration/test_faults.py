"""Broker and database outages while the pipeline runs: same final state once they are back.

These tests take services down, so they run on a stack of their own, not the
session's shared one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.dev.demo import expect, store_counts, store_matches
from popsync.dev.simulate.generator import simulate
from popsync.dev.stack import EmbeddedStack, WorkerProcess, embedded_stack, wait_until
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

CITIZENS = 300
OUTAGE_SECONDS = 12


@pytest.fixture(scope="module")
def own_stack(
    server_workdir: Callable[[str], AbstractContextManager[Path]],
) -> Iterator[EmbeddedStack]:
    with (
        server_workdir("faults") as workdir,
        embedded_stack(workdir, fast_postgres=True) as running,
    ):
        yield running


def run_through_outage(
    stack: EmbeddedStack,
    name: str,
    seed: int,
    outage: Callable[[], None],
    recovery: Callable[[], None],
) -> tuple[Settings, list[WorkerProcess]]:
    """Half the stream, the outage, the other half, the recovery; then convergence."""
    settings = stack.isolated_settings(name, processing={"retry_max_seconds": 2})
    stack.prepare(settings)
    workers = [stack.start_worker(worker, settings, tag=f"-{name}") for worker in WORKER_NAMES]
    now = datetime.now(UTC)
    messages = simulate(CITIZENS, seed=seed, now=now)
    expected = expect(messages, now, timedelta(seconds=settings.processing.future_skew_seconds))
    dsn = settings.postgres.dsn.get_secret_value()
    half = len(messages) // 2
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )

    publisher.publish((m.key, m.event) for m in messages[:half])
    assert wait_until(lambda: store_counts(dsn).history > 0, 60), "nothing applied before"
    outage()
    time.sleep(OUTAGE_SECONDS)
    for m in messages[half:]:  # buffered by the producer until the broker answers again
        publisher.send(m.key, m.event)
    recovery()
    publisher.flush()

    converged = wait_until(lambda: store_counts(dsn).history >= expected.history_rows, 180)
    counts = store_counts(dsn)
    assert converged, f"{counts.history} of {expected.history_rows} history rows"
    time.sleep(2)  # time for a wrongly duplicated write to show up
    counts = store_counts(dsn)
    assert counts.history == expected.history_rows
    assert counts.open_conflicts == expected.conflicts
    assert store_matches(dsn, expected.snapshots) == len(expected.snapshots)
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"
    return settings, workers


def said_waiting(log_path: Path) -> bool:
    return "waiting" in log_path.read_text(encoding="utf-8", errors="replace")


def test_a_postgresql_crash_and_restart_mid_stream_loses_and_duplicates_nothing(
    own_stack: EmbeddedStack,
) -> None:
    _, workers = run_through_outage(
        own_stack,
        "pgcrash",
        seed=11,
        outage=own_stack.postgres.kill,  # SIGKILL: crash recovery on the next start
        recovery=own_stack.postgres.start,
    )
    # The worker that writes the store said it was waiting for PostgreSQL.
    by_name = {worker.name: worker for worker in workers}
    assert said_waiting(by_name["synchronizer"].log_path)
    for worker in workers:
        assert worker.stop() == 0


def test_a_broker_outage_mid_stream_loses_and_duplicates_nothing(
    own_stack: EmbeddedStack,
) -> None:
    _, workers = run_through_outage(
        own_stack,
        "brokerdown",
        seed=12,
        outage=own_stack.broker.pause,
        recovery=own_stack.broker.resume,
    )
    for worker in workers:
        assert worker.stop() == 0
