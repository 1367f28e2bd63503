"""Horizontal scale: N instances of one worker kind split its input partitions.

Every instance of a worker kind joins the kind's one consumer group, so the group
coordinator hands each instance a share of the input partitions. These tests run two
instances of each kind with identical settings, exactly as replicas of a Kubernetes
Deployment or `docker compose up --scale` get them (each only has its own
/metrics port here, as each pod has its own address), on the real broker and
PostgreSQL, and check:

- the split: each instance holds a non-empty share of its kind's input partitions,
  the shares are disjoint and together cover every partition, and each instance
  processes events;
- the result: the store converges to exactly the reference fold of the stream (history
  rows, citizens equal to the fold, open conflicts, dead letters), as in the pipeline
  test;
- a stop mid-stream: SIGTERM to one instance of each kind while the stream is still
  being published and processed; it drains and exits 0, its partitions move to the
  remaining instance and the store still converges exactly (a stop with a batch in
  flight, and past the grace period, is test_shutdown's subject);
- the limit: an instance beyond the partition count gets nothing and reports not ready,
  and takes over when the instance that holds the partition stops.

Which partitions an instance holds is read from its /metrics: the watch task publishes
one `popsync_consumer_lag_messages` series per assigned partition (once its high-water
mark is known) and drops the series of partitions it no longer holds.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from popsync.adapters.kafka.producer import BatchProducer
from popsync.dev.demo import Expectation, expect, store_counts, store_matches
from popsync.dev.simulate.generator import SimulatedMessage, simulate
from popsync.dev.stack import EmbeddedStack, WorkerProcess, wait_until
from popsync.domain.pin import make_pin
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings, WorkerName
from tests.builders import birth, death, move, read_dead_letters
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

CITIZENS = 300  # about 1,800 events
SEED = 7311
INSTANCES = 2
# Time for a rebalance to settle: a join takes about half the session timeout on the
# embedded broker, and a member that leaves without a LeaveGroup (aiokafka sends none
# from generation 0, which is the first generation there) is noticed only once its
# session has expired. On Apache Kafka both are quicker; the tests only wait.
SETTLE_SECONDS = 60.0
CONVERGE_SECONDS = 120.0

Partition = tuple[str, int]  # (topic, partition)
Instances = dict[WorkerName, list[WorkerProcess]]


def input_topics(settings: Settings, kind: WorkerName) -> tuple[str, ...]:
    t = settings.topics
    return {
        "validator": (t.registry_events,),
        "synchronizer": (t.validated_events,),
    }[kind]


def all_partitions(settings: Settings, kind: WorkerName) -> frozenset[Partition]:
    partitions = range(settings.topics.partitions)
    return frozenset((topic, p) for topic in input_topics(settings, kind) for p in partitions)


def scrape(worker: WorkerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """Every sample of the worker's /metrics; None while it does not answer."""
    try:
        with urllib.request.urlopen(worker.metrics_url, timeout=3) as response:  # noqa: S310
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def assigned(worker: WorkerProcess) -> frozenset[Partition] | None:
    """The partitions `worker` holds, from its /metrics (see module doc)."""
    samples = scrape(worker)
    if samples is None:
        return None
    return frozenset(
        (labels["topic"], int(labels["partition"]))
        for name, label_set in samples
        if name == "popsync_consumer_lag_messages"
        for labels in [dict(label_set)]
    )


def consumed(worker: WorkerProcess) -> float:
    samples = scrape(worker) or {}
    return sum(v for (name, _), v in samples.items() if name == "popsync_events_consumed_total")


def readyz(worker: WorkerProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{worker.base_url}/readyz", timeout=3) as response:  # noqa: S310
            return int(response.status), response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode().strip()


def is_split(
    shares: Sequence[frozenset[Partition] | None], everything: frozenset[Partition]
) -> bool:
    """Each share non-empty, no partition in two shares, every partition in one."""
    if any(not share for share in shares):
        return False
    known = [share for share in shares if share]
    return sum(len(s) for s in known) == len(everything) and frozenset().union(*known) == everything


def wait_for(
    probe: Callable[[], dict[WorkerName, list[frozenset[Partition] | None]]],
    done: Callable[[dict[WorkerName, list[frozenset[Partition] | None]]], bool],
    timeout: float = SETTLE_SECONDS,
) -> tuple[bool, dict[WorkerName, list[frozenset[Partition] | None]]]:
    """Poll `probe` until `done` holds; the last observation either way."""
    deadline = time.monotonic() + timeout
    while True:
        seen = probe()
        if done(seen) or time.monotonic() > deadline:
            return done(seen), seen
        time.sleep(0.5)


def shares(instances: Instances) -> dict[WorkerName, list[frozenset[Partition] | None]]:
    return {kind: [assigned(worker) for worker in workers] for kind, workers in instances.items()}


def wait_for_split(
    settings: Settings, instances: Instances
) -> dict[WorkerName, list[frozenset[Partition] | None]]:
    ok, seen = wait_for(
        lambda: shares(instances),
        lambda s: all(is_split(s[kind], all_partitions(settings, kind)) for kind in s),
    )
    assert ok, f"partitions not split across the instances: {_show(seen)}"
    return seen


def _show(seen: dict[WorkerName, list[frozenset[Partition] | None]]) -> str:
    """`kind: topic/partition,... | ...` per instance, for assertion messages."""

    def share(partitions: frozenset[Partition] | None) -> str:
        if partitions is None:
            return "down"
        return ",".join(f"{topic.split('.')[-2]}/{p}" for topic, p in sorted(partitions))

    return "; ".join(f"{kind}: {' | '.join(map(share, each))}" for kind, each in seen.items())


def stop_all(workers: Sequence[WorkerProcess]) -> list[int | None]:
    """SIGTERM to every worker at once; their exit codes once all have stopped."""
    if not workers:
        return []
    with ThreadPoolExecutor(len(workers)) as pool:
        return list(pool.map(lambda worker: worker.stop(), workers))


def stream(now: datetime) -> list[SimulatedMessage]:
    """A simulated stream, plus one story that surfaces a merge conflict."""
    messages = simulate(CITIZENS, seed=SEED, now=now)
    pin = make_pin("079", "F", 1990, 999_201).value  # a serial the simulator does not use
    story = [birth(pin), death(pin, date(2020, 1, 1)), move(pin, date(2021, 1, 1))]
    return messages + [SimulatedMessage(pin.encode(), event, None) for event in story]


def publish(settings: Settings, messages: Sequence[SimulatedMessage]) -> None:
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    publisher.publish((message.key, message.event) for message in messages)


def assert_converged_exactly(settings: Settings, expected: Expectation) -> int:
    """The same checks as the pipeline test and the demo, against the reference fold.

    Returns how many dead letters were parked twice (re-delivered messages).
    """
    dsn = settings.postgres.dsn.get_secret_value()
    converged = wait_until(
        lambda: store_counts(dsn).history >= expected.history_rows, CONVERGE_SECONDS
    )
    assert converged, f"{store_counts(dsn).history} of {expected.history_rows} history rows"
    time.sleep(2)  # time for a wrongly duplicated or late write to show up
    counts = store_counts(dsn)
    assert counts.history == expected.history_rows
    assert counts.citizens == len(expected.snapshots)
    assert counts.open_conflicts == expected.conflicts
    assert store_matches(dsn, expected.snapshots) == len(expected.snapshots)

    letters = read_dead_letters(settings, wanted=expected.invalid, timeout=30)
    # At-least-once: a message re-delivered after its partition moved may be parked
    # twice; every rejected input message is parked, and nothing else is.
    parked = {(d.original_topic, d.original_partition, d.original_offset) for d in letters}
    assert len(parked) == expected.invalid
    assert {topic for topic, _, _ in parked} <= {settings.topics.registry_events}
    return len(letters) - len(parked)


@pytest.fixture
def scaled_pipeline_factory(
    stack: EmbeddedStack,
) -> Iterator[Callable[..., tuple[Settings, Instances]]]:
    """A factory of pipelines of their own with `instances` processes per worker kind."""
    started: list[WorkerProcess] = []

    def start(
        name: str, instances: int = INSTANCES, **overrides: object
    ) -> tuple[Settings, Instances]:
        settings = stack.isolated_settings(name, **overrides)
        stack.prepare(settings)
        running: Instances = {
            kind: [stack.start_worker(kind, settings, tag=f"-{name}{i}") for i in range(instances)]
            for kind in WORKER_NAMES
        }
        started.extend(w for workers in running.values() for w in workers)
        return settings, running

    yield start
    stop_all(started)
    for worker in started:
        stack.workers.remove(worker)


def test_two_instances_of_each_worker_split_the_partitions_and_converge_exactly(
    scaled_pipeline_factory: Callable[..., tuple[Settings, Instances]],
) -> None:
    settings, instances = scaled_pipeline_factory("scale")
    split = wait_for_split(settings, instances)  # before the stream: no rebalance during it
    print(f"\nassignment: {_show(split)}")

    now = datetime.now(UTC)
    messages = stream(now)
    expected = expect(messages, now, timedelta(seconds=settings.processing.future_skew_seconds))
    publish(settings, messages)
    assert assert_converged_exactly(settings, expected) == 0  # nothing re-delivered

    # Both instances of every kind did part of the work; the validators read every
    # published event once between them.
    work = {kind: [consumed(w) for w in workers] for kind, workers in instances.items()}
    assert all(count > 0 for counts in work.values() for count in counts), work
    assert sum(work["validator"]) == len(messages)
    # The assignment did not change while the stream was processed.
    assert shares(instances) == split
    for worker in (w for workers in instances.values() for w in workers):
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"


def test_sigterm_to_one_instance_mid_stream_moves_its_partitions_and_the_store_converges(
    scaled_pipeline_factory: Callable[..., tuple[Settings, Instances]],
) -> None:
    settings, instances = scaled_pipeline_factory("scaledown")
    wait_for_split(settings, instances)
    now = datetime.now(UTC)
    messages = stream(now)
    expected = expect(messages, now, timedelta(seconds=settings.processing.future_skew_seconds))
    third = len(messages) // 3

    publish(settings, messages[:third])
    everyone_busy = wait_until(
        lambda: all(consumed(w) > 0 for workers in instances.values() for w in workers),
        SETTLE_SECONDS,
    )
    assert everyone_busy, "not every instance processed part of the stream"

    # Events are on their way through all three stages when one of each kind stops.
    publish(settings, messages[third : 2 * third])
    leaving = [workers[0] for workers in instances.values()]
    for worker, code in zip(leaving, stop_all(leaving), strict=True):
        assert code == 0, f"{worker.name} did not drain cleanly; see {worker.log_path}"
    publish(settings, messages[2 * third :])

    remaining: Instances = {kind: workers[1:] for kind, workers in instances.items()}
    ok, seen = wait_for(
        lambda: shares(remaining),
        lambda s: all(s[kind] == [all_partitions(settings, kind)] for kind in s),
    )
    assert ok, f"the remaining instances did not take every partition over: {_show(seen)}"

    parked_twice = assert_converged_exactly(settings, expected)
    print(f"\n{len(messages):,} events; dead letters parked twice after the move: {parked_twice}")
    for worker in (w for workers in remaining.values() for w in workers):
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"


def test_an_instance_beyond_the_partition_count_idles_until_one_leaves(
    stack: EmbeddedStack,
) -> None:
    settings = stack.isolated_settings("scaleidle", topics={"partitions": 1})
    stack.prepare(settings)
    workers = [stack.start_worker("validator", settings, tag=f"-scaleidle{i}") for i in range(2)]
    try:
        everything = all_partitions(settings, "validator")
        ok, seen = wait_for(
            lambda: {"validator": [assigned(w) for w in workers]},
            lambda s: (
                sorted(s["validator"], key=lambda a: len(a or ())) == [frozenset(), everything]
            ),
        )
        assert ok, f"one instance should hold the only partition: {_show(seen)}"
        active, idle = sorted(workers, key=lambda w: len(assigned(w) or ()), reverse=True)
        assert readyz(idle) == (503, "no partitions assigned")

        # The idle instance is a member of the group all along: it takes over.
        assert active.stop() == 0
        took_over = wait_until(lambda: assigned(idle) == everything, SETTLE_SECONDS)
        assert took_over, f"the idle instance holds {assigned(idle)}"
        assert wait_until(lambda: readyz(idle)[0] == 200, SETTLE_SECONDS), readyz(idle)
    finally:
        stop_all(workers)
        for worker in workers:
            stack.workers.remove(worker)
