"""What is retried: infrastructure faults only, with exponential backoff.

A fault of the broker or of PostgreSQL (a lost connection, a timeout, a serialization
failure, a delivery the broker did not confirm) passes: waiting is right and skipping
would lose events. Anything else is a bug or bad data; retrying it would wedge the
partition forever, so it is not retried here (`popsync.runtime.processing` parks it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from confluent_kafka import KafkaError, KafkaException

from popsync.adapters.kafka.producer import DeliveryFailed
from popsync.adapters.postgres.sync_state import BackfillRunning
from popsync.runtime import metrics
from popsync.settings import ProcessingSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for a fault that may pass by itself: the only kind worth retrying."""
    if isinstance(exc, DeliveryFailed):
        return not exc.permanent
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        return isinstance(error, KafkaError) and error.retriable() and not error.fatal()
    # OperationalError covers lost connections, timeouts, serialization failures and
    # deadlocks; InterfaceError a connection closed under us.
    return isinstance(
        exc,
        psycopg.OperationalError | psycopg.InterfaceError | TimeoutError | ConnectionError,
    )


class RetryPolicy:
    """Runs an attempt until it succeeds, backing off between infrastructure faults.

    One per worker: `worker` labels the metrics, and the worker counts as waiting for
    infrastructure while any of its attempts is backing off.
    """

    def __init__(
        self,
        settings: ProcessingSettings,
        worker: str,
        is_transient: Callable[[BaseException], bool] = is_infrastructure_error,
    ) -> None:
        self._initial = settings.retry_initial_seconds
        self._max = settings.retry_max_seconds
        self._worker = worker
        self._is_transient = is_transient
        self._waiting: Counter[str] = Counter()  # calls backing off, by what they wait for

    async def call(self, attempt: Callable[[], Awaitable[T]], label: str) -> T:
        """`attempt()`'s result; a fault that is not transient is raised at once. A wait for
        a backfill (`BackfillRunning`) is retried alike, but shown as such: it is planned,
        not a fault of the broker or the database."""
        delay = self._initial
        failures = 0
        waited: set[str] = set()  # "infrastructure", "backfill": what this call counted
        try:
            while True:
                try:
                    result = await attempt()
                except Exception as exc:
                    if not self._is_transient(exc):
                        raise
                    failures += 1
                    what = "backfill" if isinstance(exc, BackfillRunning) else "infrastructure"
                    if what not in waited:
                        waited.add(what)
                        self._waiting[what] += 1
                    self._publish()
                    metrics.STEP_RETRIES.labels(self._worker).inc()
                    log.warning(
                        "%s: %s (%s: %s), attempt %d; waiting %.1fs to retry",
                        label,
                        "waiting for a backfill" if what == "backfill" else "infrastructure fault",
                        type(exc).__name__,
                        str(exc)[:200],
                        failures,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max)
                else:
                    if failures:
                        log.info("%s: succeeded after %d retries", label, failures)
                    return result
        finally:
            for what in waited:
                self._waiting[what] -= 1
            if waited:
                self._publish()

    def _publish(self) -> None:
        infrastructure = int(self._waiting["infrastructure"] > 0)
        metrics.WAITING_FOR_INFRASTRUCTURE.labels(self._worker).set(infrastructure)
        metrics.MERGE_FENCED.labels(self._worker).set(int(self._waiting["backfill"] > 0))
