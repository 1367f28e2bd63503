"""popsync itself, measured end to end on the benchmark stream.

`throughput`: the workers (N instances of each kind) start on a pipeline of their own
(database, topics and consumer groups) that reads the already published raw topic, and the
run lasts until the store holds every expected history row. `latency`: on a fresh pipeline
with the workers running and idle, events are published at a fixed rate and each event's
time from publication to its history row is taken from PostgreSQL.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from bench.pipeline.dataset import EVENT_CODEC, Dataset, expected_history
from popsync.adapters.kafka.producer import producer_config
from popsync.contract import models as m
from popsync.contract.codec import DecodeError
from popsync.dev.stack import EmbeddedStack, WorkerProcess
from popsync.settings import WORKER_NAMES, Settings

POLL_SECONDS = 2.0


class BenchFailed(RuntimeError):
    """A phase did not finish (a worker exited, or the timeout passed)."""


def throughput(
    stack: EmbeddedStack,
    name: str,
    raw_topic: str,
    expected_history: int,
    instances: int,
    timeout: float,
) -> dict[str, Any]:
    settings = stack.isolated_settings(name, topics={"registry_events": raw_topic})
    prepare_fresh(stack, settings)
    services_before = service_cpu_seconds(stack)
    workers = start_workers(stack, settings, instances, name)
    dsn = settings.postgres.dsn.get_secret_value()
    try:
        # One connection for the progress polls, so that its backend's CPU, the harness's
        # own, can be told apart from what the workers make PostgreSQL do.
        with psycopg.connect(dsn, autocommit=True) as progress:
            deadline = time.monotonic() + timeout
            while (stored := count_history_rows(progress)) < expected_history:
                check_alive(workers, stack)
                if time.monotonic() > deadline:
                    raise BenchFailed(
                        f"{name}: {stored:,} of {expected_history:,} rows in {timeout}s"
                    )
                time.sleep(POLL_SECONDS)
            rss, cpu = peak_rss(workers), cpu_seconds(workers)
            services = service_cpu_seconds(stack)
            polls = process_cpu_seconds(progress.info.backend_pid)
    finally:
        stop(stack, workers)
    first, last = write_span(dsn, "citizen_history")
    return {
        "instances_per_worker": instances,
        "history_rows": expected_history,
        "first_write": first,
        "last_write": last,
        "peak_rss_mb": rss,
        "cpu_seconds": cpu,
        # What the broker and PostgreSQL used over the same span (start-up included, as
        # for the workers), less the harness's own polls.
        "service_cpu_seconds": {
            "broker": round(services["broker"] - services_before["broker"], 2),
            "postgres": round(services["postgres"] - services_before["postgres"] - polls, 2),
        },
    }


def latency(
    stack: EmbeddedStack,
    dataset: Dataset,
    rate: float,
    seconds: float,
    timeout: float,
    repeat: int = 0,
) -> dict[str, Any]:
    """Publish `rate` events/s for `seconds` to idle workers; publication-to-store latency.
    Each `repeat` on a pipeline of its own."""
    name = f"bench-latency-{rate:.0f}" + (f"-{repeat}" if repeat else "")
    settings = stack.isolated_settings(name)
    prepare_fresh(stack, settings)
    # The registry's producer is long-lived, as in production: an idempotent producer
    # holds its first messages until the broker has given it a producer id (0.5-1 s
    # measured here), a start-up cost that is not the pipeline's latency. The workers'
    # start-up (group join: seconds) gives it that id before the first timed event.
    producer = Producer(producer_config(settings.kafka))
    workers = start_workers(stack, settings, 1, name)
    dsn = settings.postgres.dsn.get_secret_value()
    count = min(len(dataset), int(rate * seconds))
    expected = expected_history_of_head(dataset, count)
    try:
        wait_ready(workers, timeout=60)
        sent_at, achieved = publish_paced(
            producer, settings.topics.registry_events, dataset, count, rate
        )
        deadline = time.monotonic() + timeout
        while history_rows(dsn) < expected:
            check_alive(workers, stack)
            if time.monotonic() > deadline:
                raise BenchFailed("latency: the store did not catch up")
            time.sleep(0.5)
        rss = peak_rss(workers)
    finally:
        stop(stack, workers)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT event_id, written_at FROM citizen_history").fetchall()
    latencies = sorted(
        (written.timestamp() - sent_at[event_id]) * 1000
        for event_id, written in rows
        if event_id in sent_at
    )
    return {
        "rate_target": rate,
        "rate_achieved": round(achieved, 1),
        "seconds": seconds,
        "events": count,
        "measured": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        # Every n-th of the sorted latencies, about 2,000 points: the chart's histogram.
        "histogram_ms": [round(v, 1) for v in latencies[:: max(1, len(latencies) // 2000)]],
        "peak_rss_mb": rss,
    }


def prepare_fresh(stack: EmbeddedStack, settings: Settings) -> None:
    """Provision a phase's pipeline, which must be new: the rows of an earlier phase of the
    same name would end a throughput run at once, and lend a latency run their write times
    (two latency runs at one rate on one stack measured p50 -74 s in the second)."""
    stack.prepare(settings)
    left = history_rows(settings.postgres.dsn.get_secret_value())
    if left:
        raise BenchFailed(
            f"{settings.groups.synchronizer}: the store holds {left:,} history rows of an earlier"
            " phase; each phase needs a pipeline of its own"
        )


def publish_paced(
    producer: Producer, topic: str, dataset: Dataset, count: int, rate: float
) -> tuple[dict[str, float], float]:
    """Send the first `count` events at `rate`/s; when each event id was first sent."""
    sent_at: dict[str, float] = {}
    started = time.time()
    for index in range(count):
        due = started + index / rate
        if (wait := due - time.time()) > 0:
            time.sleep(wait)
        producer.produce(
            topic,
            key=dataset.keys[index],
            value=dataset.values[index],
            headers=dataset.headers[index] or None,
        )
        producer.poll(0)
        event_id = dataset.event_ids[index]
        if event_id is not None and event_id not in sent_at:
            sent_at[event_id] = time.time()
    achieved = count / (time.time() - started)
    if producer.flush(60):
        raise BenchFailed("latency: events not delivered")
    return sent_at, achieved


def expected_history_of_head(dataset: Dataset, count: int) -> int:
    """The history rows the first `count` events of `dataset` give (decoded again)."""
    head = zip(dataset.keys[:count], dataset.values[:count], strict=True)
    return expected_history(((key, _decoded(value)) for key, value in head), datetime.now(UTC))


def _decoded(value: bytes) -> m.RegistryEvent | None:
    try:
        event: m.RegistryEvent = EVENT_CODEC.decode(value)
    except DecodeError:
        return None
    return event


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def start_workers(
    stack: EmbeddedStack, settings: Settings, instances: int, name: str
) -> list[WorkerProcess]:
    return [
        stack.start_worker(kind, settings, tag=f"-{name}-{i}")
        for kind in WORKER_NAMES
        for i in range(instances)
    ]


def wait_ready(workers: list[WorkerProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending:
        pending = [w for w in pending if not _ready(w)]
        if pending and time.monotonic() > deadline:
            raise BenchFailed(f"not ready: {[w.name for w in pending]}")
        time.sleep(0.2)


def _ready(worker: WorkerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{worker.base_url}/readyz", timeout=2) as response:  # noqa: S310
            return int(response.status) == 200
    except OSError:
        return False


def check_alive(workers: list[WorkerProcess], stack: EmbeddedStack) -> None:
    dead = [w.name for w in workers if not w.alive]
    if dead:
        raise BenchFailed(f"worker(s) exited: {dead}; logs in {stack.workdir / 'logs'}")


def peak_rss(workers: list[WorkerProcess]) -> dict[str, float]:
    """Each worker's peak resident set (VmHWM), MB, read before it stops."""
    return {worker.log_path.stem: process_peak_rss_mb(worker.process.pid) for worker in workers}


def cpu_seconds(workers: list[WorkerProcess]) -> dict[str, float]:
    """CPU time (user + system) each worker has used so far."""
    return {worker.log_path.stem: process_cpu_seconds(worker.process.pid) for worker in workers}


def service_cpu_seconds(stack: EmbeddedStack) -> dict[str, float]:
    """CPU time the broker and PostgreSQL have used so far. PostgreSQL's counts its
    processes that have exited (each connection's backend exits with it), since the
    postmaster has reaped them: `process_cpu_seconds(..., reaped=True)`."""
    broker, postmaster = stack.broker.pid, stack.postgres.pid
    # A zero here would turn into a false figure, not a failure.
    if broker is None:
        raise BenchFailed("the broker is not running")
    if postmaster is None:
        raise BenchFailed("PostgreSQL is not running")
    return {
        "broker": process_cpu_seconds(broker),
        "postgres": tree_cpu_seconds(postmaster, stack.postgres.backend_processes),
    }


def tree_cpu_seconds(
    parent: int, live_children: Callable[[], list[int]], attempts: int = 10
) -> float:
    """CPU time of `parent`, of the children it has reaped and of those alive. A child
    that exits while this reads moves its time into the parent's once reaped, so it could
    be missed or counted twice: a reading counts only if every child read is still there
    after the parent was read."""
    for _ in range(attempts):
        children = live_children()
        try:
            alive = sum(process_cpu_seconds(pid) for pid in children)
        except (FileNotFoundError, ProcessLookupError):  # exited and reaped before it was read
            continue
        total = process_cpu_seconds(parent, reaped=True) + alive
        if set(children) <= set(live_children()):
            return round(total, 2)
    raise BenchFailed(f"the processes of {parent} kept exiting while their CPU was read")


def process_peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return round(kb / 1024, 1)


def process_cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system time of `pid`; with `reaped`, also that of the children it has
    waited for (proc(5): utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11 : 15 if reaped else 13])
    return round(ticks / os.sysconf("SC_CLK_TCK"), 2)


def stop(stack: EmbeddedStack, workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.stop()
    stack.workers = [w for w in stack.workers if w not in workers]


def history_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return count_history_rows(conn)


def count_history_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM citizen_history").fetchone()
    return int(row[0]) if row else 0


def write_span(dsn: str, table: str, column: str = "written_at") -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT min({column}), max({column}) FROM {table}").fetchone()  # noqa: S608
    if row is None or row[0] is None:
        raise BenchFailed(f"nothing written to {table}")
    return row[0].timestamp(), row[1].timestamp()
