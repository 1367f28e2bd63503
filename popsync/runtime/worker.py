"""A worker: its faust app, its step behind the one error path, its resources, its run.

A service builds one (`services/<name>/app.py`): `Worker(settings, name)`, the resources
it opens registered with `closing`, and its step attached with `process_with`, which
subscribes it to the topics the topology says it consumes. `popsync worker NAME` then
runs it (`run_worker`): faust consumes as a group member and hands each fetched batch to
the `BatchProcessor`, which returns only once the batch is durable (outputs flushed to
the broker, rows committed to PostgreSQL); only then are the batch's messages acked, and
faust commits acked offsets later. Stopping is a drain (`popsync.runtime.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import faust
from faust.types.tuples import Message

from popsync import topology
from popsync.runtime import observability
from popsync.runtime.app import make_app, raw_topic
from popsync.runtime.collector import tune_garbage_collector
from popsync.runtime.drain import (
    STOP_MARGIN_SECONDS,
    DrainController,
    DrainOutcome,
    commit_durable_offsets,
    drain,
    start_watchdog,
)
from popsync.runtime.exits import EXIT_UNFINISHED_BATCH, StopWorker, exit_without_commit
from popsync.runtime.messages import InboundMessage
from popsync.runtime.ports import Producer
from popsync.runtime.processing import BatchProcessor, Step
from popsync.runtime.quarantine import SourceGuard
from popsync.settings import Settings, WorkerName

log = logging.getLogger(__name__)

Process = Callable[[Sequence[InboundMessage]], Awaitable[None]]


class Closeable(Protocol):
    def close(self) -> Awaitable[None] | None: ...


R = TypeVar("R", bound=Closeable)


class Worker:
    """One worker process's app, drain state and resources."""

    def __init__(self, settings: Settings, name: WorkerName) -> None:
        self.settings = settings
        self.name = name
        self.app = make_app(settings, name)
        self.drain = DrainController()
        self.processes: dict[str, Process] = {}  # by topic
        self._resources: list[Closeable] = []
        self._closed = False

    def closing(self, resource: R) -> R:
        """Register `resource` to be closed when the worker stops; returns it."""
        self._resources.append(resource)
        return resource

    def process_with(
        self, step: Step, producer: Producer, guard: SourceGuard | None = None
    ) -> BatchProcessor:
        """Run `step` on every batch of the topics this worker consumes (the topology);
        with a `guard`, its dead-letter limit is judged per publishing source."""
        processor = BatchProcessor.for_worker(self.settings, self.name, step, producer, guard)
        for topic in topology.consumed_topics(self.settings, self.name):
            self.subscribe(topic, processor)
        return processor

    def subscribe(self, topic: str, process: Process) -> None:
        """Hand the batches of `topic` to `process` (see `run_batch`)."""
        self.app.topics.add(raw_topic(self.app, topic))  # faust subscribes to what is added
        self.processes[topic] = process
        self.app.batch_handlers[topic] = functools.partial(
            run_batch, process=process, drain=self.drain, label=f"{self.name}:{topic}"
        )

    async def close(self) -> None:
        """Close every registered resource, the last opened first; once."""
        if self._closed:
            return
        self._closed = True
        for resource in reversed(self._resources):
            try:
                closed = resource.close()
                if inspect.isawaitable(closed):
                    await closed
            except Exception:  # one that fails to close must not keep the others open
                log.warning("could not close %s", type(resource).__name__, exc_info=True)
        log.info("%s: closed %d resources", self.name, len(self._resources))


async def run_batch(
    messages: Sequence[Message],
    consumer: Any,
    *,
    process: Process,
    drain: DrainController,
    label: str,
) -> None:
    """Make one fetched batch durable through `process`, then ack it.

    A batch taken once the drain has begun never reaches the step and is never acked,
    so it is never committed: this waits until the stop cancels it.
    """
    if drain.draining:
        log.info("%s: draining; %d messages left for the next run", label, len(messages))
        await _until_cancelled()
    batch = [_inbound(message) for message in messages]
    with drain.batch():
        try:
            await process(batch)
        except asyncio.CancelledError:
            log.error("%s: stopped while a batch was not yet durable", label)
            exit_without_commit(EXIT_UNFINISHED_BATCH)
        except StopWorker as stop:
            log.critical("%s: stopping: %s", label, stop)
            exit_without_commit(stop.exit_code)
        for message in messages:  # durable: committable from now on
            consumer.ack(message)
        drain.finished(batch)


async def _until_cancelled() -> None:
    await asyncio.get_running_loop().create_future()


def _inbound(message: Message) -> InboundMessage:
    return InboundMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=_headers(message.headers),
    )


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    """A record's headers as (name, bytes) pairs, whatever form the client gives them in."""
    pairs = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return tuple(
        (str(name), value.encode() if isinstance(value, str) else value) for name, value in pairs
    )


class DrainingWorker(faust.Worker):
    """faust's worker, with SIGTERM/SIGINT turned into a bounded drain."""

    def __init__(self, worker: Worker, **kwargs: Any) -> None:
        super().__init__(worker.app, **kwargs)
        self._worker = worker
        self._drain_task: asyncio.Future[None] | None = None

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()  # SIGUSR1/2 stay mode's
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: signal.Signals) -> None:
        """Only sets the flag and schedules the drain."""
        controller = self._worker.drain
        if not controller.begin():
            log.info("%s received again; still draining", signum.name)
            return
        grace = self._worker.settings.processing.shutdown_grace_seconds
        log.info(
            "%s received: draining (batches in flight: %d, grace %.1fs)",
            signum.name,
            controller.in_flight,
            grace,
        )
        start_watchdog(controller, grace + STOP_MARGIN_SECONDS)
        self._drain_task = asyncio.ensure_future(self._drain_then_stop(signum))

    async def _drain_then_stop(self, signum: signal.Signals) -> None:
        worker = self._worker
        result = await drain(
            worker.drain,
            worker.settings.processing.shutdown_grace_seconds,
            lambda: commit_durable_offsets(self.app, worker.settings.kafka, worker.drain.durable),
        )
        if result.outcome is not DrainOutcome.DRAINED:
            log.error("drain failed after %.2fs: %s", result.seconds, result.outcome.value)
            exit_without_commit(result.outcome.exit_code)
        log.info("drained in %.2fs: finished batches committed; stopping", result.seconds)
        await worker.close()  # nothing is in flight, and a held batch never reaches a step
        # Nothing left to wait for: a batch taken during the drain is held and
        # will never be acked, so faust's own wait for unacked messages would hang.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.app.conf.stream_wait_empty = False
        if signum == signal.SIGINT:
            super()._on_sigint()
        else:
            super()._on_sigterm()


def run_worker(worker: Worker) -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT, then drain (`runtime.drain`).

    Its HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, see `runtime.observability`)
    serves from before faust starts until the worker has stopped.
    """
    settings = worker.settings
    tune_garbage_collector(settings.processing.gc_first_threshold)
    controller = worker.drain
    health = observability.Health(worker.name, settings.observability.ready_max_lag)
    endpoint = observability.Endpoint(
        settings.observability.bind_host, settings.observability.port, health
    ).start()

    async def watch() -> None:
        await observability.watch(
            worker.app, health, lambda: controller.durable, lambda: controller.draining
        )

    worker.app.task(watch)  # starts once the app has started; ends with it
    runner = DrainingWorker(worker, loglevel=settings.log_level, quiet=True)
    exit_code: object = None
    try:
        runner.execute_from_commandline()
    except SystemExit as done:
        exit_code = done.code
        raise
    finally:
        health.stopped()
        endpoint.stop()
        with contextlib.suppress(Exception):  # stopped without a drain: close what is left
            asyncio.run(worker.close())
        if controller.began_at is not None:
            log.info(
                "stopped %.2fs after the stop signal (exit code %s)",
                time.monotonic() - controller.began_at,
                exit_code,
            )
