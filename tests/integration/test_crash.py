"""Crash test: `kill -9` every kind of worker at random moments; the store must not notice.

One simulated stream is processed twice on the real broker and PostgreSQL: once
undisturbed, once while workers are killed with SIGKILL and restarted, each kind
in turn, several times. The `citizens`, `citizen_history` and `citizen_conflicts`
tables of both runs must be equal: no event lost, no history row duplicated.

Size: `--crash-citizens N` (default 1,500 citizens ≈ 8,000 events, for CI) and
`--crash-kills K` (default 2 kills of each kind); `--crash-citizens 9200` gives
over 50,000 events (see docs/reliability.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.kafka.reader import read_to_end
from popsync.dev.demo import Expectation, expect
from popsync.dev.simulate.generator import SimulatedMessage, simulate
from popsync.dev.stack import EmbeddedStack, WorkerProcess, wait_until
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings, WorkerName
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

SEED = 20250701

# Columns that depend on wall time (applied_at, written_at, detected_at) are left out:
# they differ between any two runs. Everything a citizen's record says is compared.
_TABLES = {
    "citizens": "SELECT pin, version, snapshot::text, last_event_id FROM citizens",
    "citizen_history": (
        "SELECT pin, version, event_id, event_type, source_registry, changed_fields::text,"
        " changes::text, occurred_at FROM citizen_history"
    ),
    "citizen_conflicts": (
        "SELECT pin, event_id, conflict_code, resolved_at IS NULL FROM citizen_conflicts"
    ),
}


def dump(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return {name: sorted(conn.execute(sql).fetchall()) for name, sql in _TABLES.items()}


def history_rows(settings: Settings) -> int:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        row = conn.execute("SELECT count(*) FROM citizen_history").fetchone()
    return int(row[0]) if row else 0


def topic_size(settings: Settings, topic: str) -> int:
    """Messages in `topic`, read to the end (fetch high-water marks, not ListOffsets)."""
    return sum(1 for _ in read_to_end(settings.kafka, topic, timeout=60))


def chunks(messages: Sequence[SimulatedMessage], count: int) -> list[Sequence[SimulatedMessage]]:
    size = -(-len(messages) // count)
    return [messages[i : i + size] for i in range(0, len(messages), size)]


def publish(settings: Settings, messages: Sequence[SimulatedMessage]) -> None:
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    publisher.publish((message.key, message.event) for message in messages)


def converge(settings: Settings, expected: Expectation, timeout: float) -> None:
    converged = wait_until(lambda: history_rows(settings) >= expected.history_rows, timeout)
    assert converged, f"{history_rows(settings)} of {expected.history_rows} history rows"


class CrashingPipeline:
    """The three workers of one pipeline, which the test kills and restarts."""

    def __init__(self, stack: EmbeddedStack, settings: Settings) -> None:
        self._stack = stack
        self._settings = settings
        self._restarts = 0
        self.workers: dict[WorkerName, WorkerProcess] = {
            name: stack.start_worker(name, settings, tag="-crash") for name in WORKER_NAMES
        }

    def kill_and_restart(self, name: WorkerName) -> None:
        worker = self.workers[name]
        assert worker.alive, f"{name} died on its own; see {worker.log_path}"
        worker.kill()  # SIGKILL: no drain, no commit, no flush
        self._restarts += 1
        self.workers[name] = self._stack.start_worker(
            name, self._settings, tag=f"-crash{self._restarts}"
        )


@pytest.fixture(scope="module")
def stream(request: pytest.FixtureRequest) -> tuple[list[SimulatedMessage], datetime]:
    citizens = int(request.config.getoption("--crash-citizens"))
    now = datetime.now(UTC)
    return simulate(citizens, seed=SEED, now=now), now


def test_kill_9_of_any_worker_changes_nothing_in_the_store(
    stack: EmbeddedStack,
    stream: tuple[list[SimulatedMessage], datetime],
    request: pytest.FixtureRequest,
) -> None:
    messages, now = stream
    undisturbed = stack.isolated_settings("crashref")
    crashed = stack.isolated_settings("crashed")
    expected = expect(messages, now, timedelta(seconds=undisturbed.processing.future_skew_seconds))
    timeout = 120 + len(messages) / 50

    # The undisturbed run: the reference the crashed run must equal.
    stack.prepare(undisturbed)
    reference_workers = [stack.start_worker(n, undisturbed, tag="-ref") for n in WORKER_NAMES]
    publish(undisturbed, messages)
    converge(undisturbed, expected, timeout)
    for worker in reference_workers:
        assert worker.stop() == 0

    # The crashed run: the stream arrives in parts while workers are killed in between.
    stack.prepare(crashed)
    pipeline = CrashingPipeline(stack, crashed)
    rng = random.Random(SEED)
    kills_per_kind = int(request.config.getoption("--crash-kills"))
    kills: list[WorkerName] = [name for _ in range(kills_per_kind) for name in WORKER_NAMES]
    parts = chunks(messages, len(kills) + 1)
    for part, victim in zip(parts, kills, strict=False):
        publish(crashed, part)
        time.sleep(rng.uniform(0.5, 3.0))  # a random moment while the part is processed
        pipeline.kill_and_restart(victim)
    for part in parts[len(kills) :]:
        publish(crashed, part)
    converge(crashed, expected, timeout)
    time.sleep(3)  # time for a wrongly duplicated write to show up
    for name, worker in pipeline.workers.items():
        assert worker.stop() == 0, f"{name}: see {worker.log_path}"

    got, want = dump(crashed), dump(undisturbed)
    assert len(want["citizen_history"]) == expected.history_rows
    assert len(want["citizens"]) == len(expected.snapshots)
    for table in _TABLES:
        missing = set(want[table]) - set(got[table])
        extra = set(got[table]) - set(want[table])
        assert not missing and not extra, f"{table}: {len(missing)} missing, {len(extra)} extra"
        assert got[table] == want[table]

    # Evidence that the kills hit unfinished work: messages processed twice upstream.
    redelivered = {
        topic: topic_size(crashed, getattr(crashed.topics, topic))
        - topic_size(undisturbed, getattr(undisturbed.topics, topic))
        for topic in ("validated_events", "citizen_updates")
    }
    print(f"\n{len(messages):,} events, {len(kills)} kills; re-sent after a kill: {redelivered}")
    assert all(extra >= 0 for extra in redelivered.values())
