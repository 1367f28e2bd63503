"""How every worker runs: a faust app from settings, and a batch loop around one step.

A worker is `popsync worker NAME`: faust consumes its input topic as a group
member and hands batches to the worker's step. The step must make its effect
durable (outputs flushed to the broker, rows committed to PostgreSQL) before it
returns: faust acks a batch's offsets only after the loop body finishes, and
commits them later. Infrastructure faults are retried with backoff for as long
as it takes; a batch is never skipped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from popsync import metrics
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


EXIT_UNFINISHED_BATCH = 75  # EX_TEMPFAIL: restart me, nothing was committed


class StopWorker(Exception):
    """Raised by a step that must not go on (e.g. the dead-letter limit was hit).

    The worker exits at once with `exit_code`, without committing the batch, so
    after the fix the same batch is processed again: nothing is lost.
    """

    def __init__(self, reason: str, exit_code: int = 70) -> None:  # 70: EX_SOFTWARE
        super().__init__(reason)
        self.exit_code = exit_code


BatchStep = Callable[[Sequence[InboundMessage]], Awaitable[None]]


def make_app(settings: Settings, worker: WorkerName) -> faust.App:
    """A faust app for one worker kind; every instance of it joins one group."""
    return faust.App(
        settings.groups.for_worker(worker),
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap_servers.split(",")],
        broker_client_id=f"{settings.kafka.client_id}-{worker}",
        broker_credentials=faust_credentials(settings.kafka),
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.kafka.session_timeout_ms / 3000, 1.0),
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        producer_acks=-1,
        stream_wait_empty=True,
        store="memory://",
    )


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


def register_batch_agent(
    app: faust.App, topic_name: str, step: BatchStep, settings: Settings, label: str
) -> None:
    """Feed batches of `topic_name` to `step`, retrying it until it succeeds."""
    processing = settings.processing

    @app.agent(raw_topic(app, topic_name), name=label)
    async def consume(stream: Any) -> None:
        async for events in stream.take_events(
            processing.batch_size, processing.batch_window_seconds
        ):
            batch = [_inbound(event) for event in events]
            try:
                await retry_until_done(functools.partial(step, batch), label, settings)
            except asyncio.CancelledError:
                log.error("%s: stopped while a batch was not yet durable", label)
                _exit_without_commit(EXIT_UNFINISHED_BATCH)
            except StopWorker as stop:
                log.critical("%s: stopping: %s", label, stop)
                _exit_without_commit(stop.exit_code)


def _exit_without_commit(exit_code: int) -> None:
    """Stop the process before faust can commit a batch that is not yet durable.

    faust's `take_events` acks a batch in a `finally`, even when the loop body was
    cancelled, and commits acked offsets on shutdown. Exiting at once leaves the
    batch uncommitted, so it is re-delivered and re-applied idempotently.
    """
    log.error("exiting without committing the current batch (exit code %d)", exit_code)
    logging.shutdown()
    os._exit(exit_code)


def _inbound(event: Any) -> InboundMessage:
    message = event.message
    return InboundMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
    )


async def retry_until_done(
    attempt: Callable[[], Awaitable[None]], label: str, settings: Settings
) -> None:
    """Run `attempt` until it succeeds, backing off exponentially between faults.

    Only infrastructure faults reach here (steps route bad events themselves);
    those pass, so waiting is right and skipping would lose events.
    """
    delay = settings.processing.retry_initial_seconds
    failures = 0
    while True:
        try:
            await attempt()
        except (asyncio.CancelledError, StopWorker):
            raise
        except Exception as exc:
            failures += 1
            metrics.STEP_RETRIES.labels(label).inc()
            metrics.WAITING_FOR_INFRASTRUCTURE.labels(label).set(1)
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
                metrics.WAITING_FOR_INFRASTRUCTURE.labels(label).set(0)
                log.info("%s: step succeeded after %d retries", label, failures)
            return


@dataclass(frozen=True)
class Worker:
    """A built worker: its faust app and what to close once the app has stopped."""

    app: faust.App
    closers: Sequence[Callable[[], None]] = ()


def run_worker(worker: Worker, settings: Settings) -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT."""
    try:
        # mode's Worker installs SIGINT/SIGTERM handlers that stop the app cleanly.
        faust.Worker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
    finally:
        for close in worker.closers:
            close()
