"""Stopping a worker without losing or repeating work: the drain.

Stopping (SIGTERM from Kubernetes, or SIGINT) is a drain, in this order:
1. the signal only sets the drain flag (`DrainController.begin`);
2. a batch in flight is finished: its step runs to durability, retries
   included, and the batch is acked; no other batch starts (one taken
   meanwhile is held unacked, so it is never committed);
3. once no batch is in flight, the offsets of every finished batch are
   committed and read back from the broker (`commit_durable_offsets`);
4. the worker's resources are closed, faust stops (leaves the group), the process
   exits 0.
If the in-flight batch is not durable within `shutdown_grace_seconds`, or the
commit cannot be confirmed, the process exits at once with
`EXIT_UNFINISHED_BATCH` (75) and commits nothing more, so that batch is
re-delivered and re-applied idempotently. A watchdog ends the process
`STOP_MARGIN_SECONDS` after the grace period whatever happens.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition
from faust.types import AppT

from popsync.adapters.kafka.logs import CLIENT_LOGGER
from popsync.runtime.exits import EXIT_DRAINED, EXIT_UNFINISHED_BATCH, exit_now
from popsync.runtime.messages import InboundMessage
from popsync.settings import KafkaSettings

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]  # (topic, partition)

# After the grace period: time left to commit, leave the group and shut down.
STOP_MARGIN_SECONDS = 4.0
# Longest wait for the commit of finished batches to be confirmed by the broker.
COMMIT_TIMEOUT_SECONDS = 3.0


class DrainController:
    """The drain flag and the batches in flight, shared by one worker's steps.

    `begin` is all a stop signal does. A step asks `draining` before it starts
    a batch, and runs the batch inside `batch()`, so `wait_idle` returns
    once no batch is in flight. `durable` holds, per (topic, partition), the
    offset after the last message of a finished (durable and acked) batch: what
    may be committed.
    """

    def __init__(self) -> None:
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._durable: dict[PartitionKey, int] = {}
        self.began_at: float | None = None
        self.committed = False

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def durable(self) -> Mapping[PartitionKey, int]:
        return dict(self._durable)

    def begin(self) -> bool:
        """Start draining; False if already draining (a repeated signal)."""
        if self._draining:
            return False
        self._draining = True
        self.began_at = time.monotonic()
        return True

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Count a batch as in flight for as long as the block runs."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def finished(self, batch: Sequence[InboundMessage]) -> None:
        """Record a batch whose effect is durable and whose messages are acked."""
        for key, end in end_offsets(batch).items():
            self._durable[key] = max(self._durable.get(key, 0), end)

    async def wait_idle(self) -> None:
        await self._idle.wait()


def end_offsets(batch: Iterable[InboundMessage]) -> dict[PartitionKey, int]:
    """Per (topic, partition), the offset after the batch's last message: its commit point."""
    ends: dict[PartitionKey, int] = {}
    for message in batch:
        key = (message.topic, message.partition)
        ends[key] = max(ends.get(key, 0), message.offset + 1)
    return ends


def uncommitted(
    durable: Mapping[PartitionKey, int], committed: Mapping[PartitionKey, int]
) -> dict[PartitionKey, int]:
    """Durable end offsets that the group's committed offsets do not cover yet."""
    return {key: end for key, end in durable.items() if committed.get(key, -1) < end}


class DrainOutcome(enum.Enum):
    DRAINED = "drained"  # finished batches committed; stop normally
    GRACE_EXCEEDED = "grace exceeded"  # a batch was still not durable
    COMMIT_FAILED = "commit not confirmed"

    @property
    def exit_code(self) -> int:
        return EXIT_DRAINED if self is DrainOutcome.DRAINED else EXIT_UNFINISHED_BATCH


@dataclass(frozen=True)
class DrainResult:
    outcome: DrainOutcome
    seconds: float


async def drain(
    controller: DrainController,
    grace_seconds: float,
    commit: Callable[[], Awaitable[bool]],
    commit_timeout: float = COMMIT_TIMEOUT_SECONDS,
) -> DrainResult:
    """Wait up to `grace_seconds` for the batches in flight, then commit the finished ones.

    `commit` returns True once the broker has the offsets of every finished batch.
    """
    started = time.monotonic()
    try:
        await asyncio.wait_for(controller.wait_idle(), timeout=grace_seconds)
    except TimeoutError:
        return DrainResult(DrainOutcome.GRACE_EXCEEDED, time.monotonic() - started)
    try:
        confirmed = await asyncio.wait_for(commit(), timeout=commit_timeout)
    except Exception as exc:  # TimeoutError included: the broker did not answer
        log.error("commit of finished batches failed (%s: %s)", type(exc).__name__, exc)
        confirmed = False
    controller.committed = confirmed
    outcome = DrainOutcome.DRAINED if confirmed else DrainOutcome.COMMIT_FAILED
    return DrainResult(outcome, time.monotonic() - started)


def read_committed(
    kafka: KafkaSettings, group: str, keys: Iterable[PartitionKey], timeout: float
) -> dict[PartitionKey, int]:
    """The group's committed offsets as the broker has them (no group membership needed)."""
    config = {**kafka.librdkafka(), "group.id": group, "enable.auto.commit": "false"}
    consumer = Consumer(config, logger=CLIENT_LOGGER)
    try:
        found = consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=timeout)
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.error is None}
    finally:
        consumer.close()


async def commit_durable_offsets(
    app: AppT, kafka: KafkaSettings, durable: Mapping[PartitionKey, int]
) -> bool:
    """Commit the acked offsets and confirm the broker has every durable one.

    faust alone is not enough: when a commit fails it logs, yet records the
    offsets as committed and never tries them again. So commit through faust's
    consumer (the group member) and read the result back from the broker.
    """
    if not durable:
        return True  # nothing finished (e.g. stopped during start-up)
    assigned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
    wanted = {key: end for key, end in durable.items() if key in assigned}
    if not wanted:
        return True
    while True:
        await app.consumer.commit()
        committed = await asyncio.to_thread(
            read_committed, kafka, app.conf.id, wanted, COMMIT_TIMEOUT_SECONDS
        )
        missing = uncommitted(wanted, committed)
        if not missing:
            return True
        log.warning("commit not confirmed yet for %d partitions; retrying", len(missing))
        await asyncio.sleep(0.2)


def watchdog_exit_code(controller: DrainController) -> int:
    """How a process still alive at the hard deadline exits."""
    if controller.committed and controller.in_flight == 0:
        return EXIT_DRAINED
    return EXIT_UNFINISHED_BATCH


def start_watchdog(controller: DrainController, seconds: float) -> threading.Timer:
    """End the process `seconds` from now if it is still running, whatever hangs."""

    def fire() -> None:
        code = watchdog_exit_code(controller)
        log.error(
            "still running %.1fs after the stop signal; exiting now (exit code %d)", seconds, code
        )
        exit_now(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
