"""How every worker runs: a faust app from settings, and a batch loop around one step.

A worker is `popsync worker NAME`: faust consumes its input topic as a group
member, and its consumer hands each fetched batch to the worker's step
(`popsync.runtime.consumer`). The step must make its effect durable (outputs
flushed to the broker, rows committed to PostgreSQL) before it returns; only then
are the batch's messages acked, and faust commits acked offsets later.
Infrastructure faults are retried with backoff for as long as it takes; a batch
is never skipped.

Stopping (SIGTERM from Kubernetes, or SIGINT) is a drain, in this order:
1. the signal only sets the drain flag (`DrainController.begin`);
2. a batch in flight is finished: its step runs to durability, retries
   included, and the batch is acked; no other batch starts (one taken
   meanwhile is held unacked, so it is never committed);
3. once no batch is in flight, the offsets of every finished batch are
   committed and read back from the broker (`commit_durable_offsets`);
4. faust stops (leaves the group), the closers run, the process exits 0.
If the in-flight batch is not durable within `shutdown_grace_seconds`, or the
commit cannot be confirmed, the process exits at once with
`EXIT_UNFINISHED_BATCH` (75) and commits nothing more, so that batch is
re-delivered and re-applied idempotently. A watchdog ends the process
`STOP_MARGIN_SECONDS` after the grace period whatever happens.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import gc
import logging
import os
import signal
import ssl
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from confluent_kafka import Consumer, TopicPartition
from faust.types import AppT
from faust.types.tuples import Message

from popsync.runtime import metrics, observability
from popsync.runtime.consumer import BatchApp, Batching, batch_handlers
from popsync.settings import KafkaSettings, Settings, WorkerName

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage:
    """One consumed message, with everything a dead letter needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


EXIT_DRAINED = 0  # every finished batch committed; nothing in flight
EXIT_UNFINISHED_BATCH = 75  # EX_TEMPFAIL: restart me, nothing was committed

# After the grace period: time left to commit, leave the group and shut down.
STOP_MARGIN_SECONDS = 4.0
# Longest wait for the commit of finished batches to be confirmed by the broker.
COMMIT_TIMEOUT_SECONDS = 3.0


class StopWorker(Exception):
    """Raised by a step that must not go on (e.g. the dead-letter limit was hit).

    The worker exits at once with `exit_code`, without committing the batch, so
    after the fix the same batch is processed again: nothing is lost.
    """

    def __init__(self, reason: str, exit_code: int = 70) -> None:  # 70: EX_SOFTWARE
        super().__init__(reason)
        self.exit_code = exit_code


BatchStep = Callable[[Sequence[InboundMessage]], Awaitable[None]]
PartitionKey = tuple[str, int]  # (topic, partition)


_worker_names: weakref.WeakKeyDictionary[faust.App, WorkerName] = weakref.WeakKeyDictionary()


def make_app(settings: Settings, worker: WorkerName) -> faust.App:
    """A faust app for one worker kind; every instance of it joins one group."""
    app = BatchApp(
        settings.groups.for_worker(worker),
        batching=Batching(
            size=settings.processing.batch_size,
            window_seconds=settings.processing.batch_window_seconds,
        ),
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap_servers.split(",")],
        broker_client_id=f"{settings.kafka.client_id}-{worker}",
        broker_credentials=faust_credentials(settings.kafka),
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.kafka.session_timeout_ms / 3000, 1.0),
        broker_max_poll_records=settings.kafka.max_poll_records,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        producer_acks=-1,
        # On a rebalance, let the batch in flight finish (and commit) before the
        # partitions go. On our own stop the drain has done that already and
        # turns this off (see DrainingWorker), since a held batch never acks.
        stream_wait_empty=True,
        store="memory://",
    )
    _worker_names[app] = worker
    return app


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The same broker security for faust (aiokafka) as for confluent-kafka."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    tls = ssl.create_default_context() if kafka.security_protocol.endswith("SSL") else None
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=tls,
        )
    return faust.SSLCredentials(tls)


def raw_topic(app: faust.App, name: str) -> Any:
    """A topic read as bytes: decoding is the worker's job, so bad bytes reach it intact."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )


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


_controllers: weakref.WeakKeyDictionary[faust.App, DrainController] = weakref.WeakKeyDictionary()


def drain_controller(app: faust.App) -> DrainController:
    """The one controller of `app`'s steps and its worker."""
    controller = _controllers.get(app)
    if controller is None:
        controller = _controllers[app] = DrainController()
    return controller


def register_batch_step(
    app: faust.App, topic_name: str, step: BatchStep, settings: Settings, label: str
) -> None:
    """Subscribe the worker to `topic_name` and hand its batches to `step` (see `run_batch`)."""
    app.topics.add(raw_topic(app, topic_name))  # faust's consumer subscribes to what is added
    batch_handlers(app)[topic_name] = functools.partial(
        run_batch,
        step=step,
        drain=drain_controller(app),
        settings=settings,
        label=label,
        worker=_worker_names.get(app, label),  # the metrics' `worker` label, whatever the topic
    )


async def run_batch(
    messages: Sequence[Message],
    consumer: Any,
    *,
    step: BatchStep,
    drain: DrainController,
    settings: Settings,
    label: str,
    worker: str,
) -> None:
    """Make one fetched batch durable through `step`, retrying it until it succeeds, then ack it.

    A batch taken once the drain has begun never reaches the step and is never acked,
    so it is never committed: this waits until the stop cancels it.
    """
    if drain.draining:
        log.info("%s: draining; %d messages left for the next run", label, len(messages))
        await _until_cancelled()
    batch = [_inbound(message) for message in messages]
    with drain.batch():
        try:
            await retry_until_done(functools.partial(step, batch), label, settings, worker=worker)
        except asyncio.CancelledError:
            log.error("%s: stopped while a batch was not yet durable", label)
            _exit_without_commit(EXIT_UNFINISHED_BATCH)
        except StopWorker as stop:
            log.critical("%s: stopping: %s", label, stop)
            _exit_without_commit(stop.exit_code)
        for message in messages:  # durable: committable from now on
            consumer.ack(message)
        drain.finished(batch)


async def _until_cancelled() -> None:
    await asyncio.get_running_loop().create_future()


def _exit_without_commit(exit_code: int) -> None:
    """Stop the process now, with the batch that is not durable left unacked.

    Nothing of it is committed, so it is re-delivered and re-applied idempotently;
    faust's orderly shutdown would wait for that batch's acks, which never come.
    """
    log.error("exiting without committing the current batch (exit code %d)", exit_code)
    _exit_now(exit_code)


def _exit_now(exit_code: int) -> None:
    logging.shutdown()
    os._exit(exit_code)


def _inbound(message: Message) -> InboundMessage:
    return InboundMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
    )


_waiting: collections.Counter[str] = collections.Counter()  # steps backing off, per worker


async def retry_until_done(
    attempt: Callable[[], Awaitable[None]],
    label: str,
    settings: Settings,
    worker: str | None = None,
) -> None:
    """Run `attempt` until it succeeds, backing off exponentially between faults.

    Only infrastructure faults reach here (steps route bad events themselves);
    those pass, so waiting is right and skipping would lose events. `label` names
    the step in logs; metrics count per `worker` (default: `label`), waiting while
    any of its steps is.
    """
    worker = worker or label
    delay = settings.processing.retry_initial_seconds
    failures = 0
    while True:
        try:
            await attempt()
        except (asyncio.CancelledError, StopWorker):
            if failures:
                _waiting[worker] -= 1
            raise
        except Exception as exc:
            failures += 1
            metrics.STEP_RETRIES.labels(worker).inc()
            if failures == 1:
                _waiting[worker] += 1
            metrics.WAITING_FOR_INFRASTRUCTURE.labels(worker).set(1)
            log.warning(
                "%s: step failed (%s: %s), attempt %d; waiting %.1fs before retrying",
                label,
                type(exc).__name__,
                str(exc)[:200],
                failures,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.processing.retry_max_seconds)
        else:
            if failures:
                _waiting[worker] -= 1
                metrics.WAITING_FOR_INFRASTRUCTURE.labels(worker).set(int(_waiting[worker] > 0))
                log.info("%s: step succeeded after %d retries", label, failures)
            return


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
    consumer = Consumer({**kafka.librdkafka(), "group.id": group, "enable.auto.commit": "false"})
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


class DrainingWorker(faust.Worker):
    """faust's worker, with SIGTERM/SIGINT turned into a bounded drain."""

    def __init__(
        self, app: faust.App, *, controller: DrainController, settings: Settings, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._controller = controller
        self._settings = settings
        self._drain_task: asyncio.Future[None] | None = None

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()  # SIGUSR1/2 stay mode's
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: signal.Signals) -> None:
        """Only sets the flag and schedules the drain."""
        controller = self._controller
        if not controller.begin():
            log.info("%s received again; still draining", signum.name)
            return
        grace = self._settings.processing.shutdown_grace_seconds
        log.info(
            "%s received: draining (batches in flight: %d, grace %.1fs)",
            signum.name,
            controller.in_flight,
            grace,
        )
        start_watchdog(controller, grace + STOP_MARGIN_SECONDS)
        self._drain_task = asyncio.ensure_future(self._drain_then_stop(signum))

    async def _drain_then_stop(self, signum: signal.Signals) -> None:
        result = await drain(
            self._controller,
            self._settings.processing.shutdown_grace_seconds,
            lambda: commit_durable_offsets(
                self.app, self._settings.kafka, self._controller.durable
            ),
        )
        if result.outcome is not DrainOutcome.DRAINED:
            log.error("drain failed after %.2fs: %s", result.seconds, result.outcome.value)
            _exit_without_commit(result.outcome.exit_code)
        log.info("drained in %.2fs: finished batches committed; stopping", result.seconds)
        # Nothing left to wait for: a batch taken during the drain is held and
        # will never be acked, so faust's own wait for unacked messages would hang.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.app.conf.stream_wait_empty = False
        if signum == signal.SIGINT:
            super()._on_sigint()
        else:
            super()._on_sigterm()


def start_watchdog(controller: DrainController, seconds: float) -> threading.Timer:
    """End the process `seconds` from now if it is still running, whatever hangs."""

    def fire() -> None:
        code = watchdog_exit_code(controller)
        log.error(
            "still running %.1fs after the stop signal; exiting now (exit code %d)", seconds, code
        )
        _exit_now(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


@dataclass(frozen=True)
class Worker:
    """A built worker: its faust app and what to close once the app has stopped."""

    app: faust.App
    closers: Sequence[Callable[[], None]] = ()


def tune_garbage_collector(first_threshold: int) -> None:
    """Run the cyclic garbage collector far less often, and never over what start-up built.

    A worker allocates hundreds of short-lived objects per event, which reference counting
    frees; almost none are in cycles. At Python's default (a collection every 700
    allocations, each tenth of them over the older generation too) the collector took
    about 30% of the synchronizer step's CPU in a replay of 60,000 events, rescanning the
    states it keeps. A collection walks the young objects still alive, about a batch's worth
    whatever the threshold, so a rarer one costs little more: on the 1,000,000-event
    benchmark stream, 500,000 instead of 50,000 (with 20,000 cached citizens instead of
    25,000) took the three workers from 368 to 273 µs of CPU per event.
    """
    gc.collect()
    gc.freeze()  # modules, schemas, settings: alive for the whole run
    if first_threshold == 0:
        gc.disable()
        return
    gc.set_threshold(first_threshold, *gc.get_threshold()[1:])


def run_worker(worker: Worker, settings: Settings) -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT, then drain (see module doc).

    Its HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, see `popsync.runtime.observability`)
    serves from before faust starts until the worker has stopped.
    """
    tune_garbage_collector(settings.processing.gc_first_threshold)
    controller = drain_controller(worker.app)
    health = observability.Health(_worker_names[worker.app], settings.observability.ready_max_lag)
    endpoint = observability.Endpoint(
        settings.observability.bind_host, settings.observability.port, health
    ).start()

    async def watch() -> None:
        await observability.watch(
            worker.app, health, lambda: controller.durable, lambda: controller.draining
        )

    worker.app.task(watch)  # starts once the app has started; ends with it
    runner = DrainingWorker(
        worker.app,
        controller=controller,
        settings=settings,
        loglevel=settings.log_level,
        quiet=True,
    )
    exit_code: object = None
    try:
        runner.execute_from_commandline()
    except SystemExit as done:
        exit_code = done.code
        raise
    finally:
        health.stopped()
        endpoint.stop()
        for close in worker.closers:
            close()
        if controller.began_at is not None:
            log.info(
                "stopped %.2fs after the stop signal (exit code %s)",
                time.monotonic() - controller.began_at,
                exit_code,
            )
