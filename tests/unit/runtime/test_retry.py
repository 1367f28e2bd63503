"""What is retried: infrastructure faults only, with backoff; anything else goes through."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from popsync.adapters.kafka.producer import DeliveryFailed
from popsync.runtime.exits import StopWorker
from popsync.runtime.retry import RetryPolicy, is_infrastructure_error
from popsync.settings import ProcessingSettings

FAST = ProcessingSettings(retry_initial_seconds=0.001, retry_max_seconds=0.004)


def policy(worker: str) -> RetryPolicy:
    return RetryPolicy(FAST, worker)


def sample(name: str, label: str) -> float:
    return REGISTRY.get_sample_value(name, {"worker": label}) or 0.0


def test_retry_retries_infrastructure_faults_then_succeeds() -> None:
    label = "unit-retry-ok"
    calls: list[int] = []
    waiting_while_failing: list[float] = []

    async def attempt() -> None:
        calls.append(1)
        if len(calls) > 1:
            waiting_while_failing.append(sample("popsync_waiting_for_infrastructure", label))
        if len(calls) < 4:
            raise ConnectionError("database unreachable")

    asyncio.run(policy(label).call(attempt, label))
    assert len(calls) == 4
    assert sample("popsync_step_retries_total", label) == 3
    assert waiting_while_failing == [1.0, 1.0, 1.0]
    assert sample("popsync_waiting_for_infrastructure", label) == 0


def test_retry_backs_off_exponentially_up_to_the_maximum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    failures = iter(range(5))

    async def attempt() -> None:
        if next(failures, None) is not None:
            raise ConnectionError("broker down")

    config = ProcessingSettings(retry_initial_seconds=0.5, retry_max_seconds=3.0)
    asyncio.run(RetryPolicy(config, "unit-retry-backoff").call(attempt, "backoff"))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("error", [StopWorker("dead-letter limit"), asyncio.CancelledError()])
def test_retry_lets_stop_and_cancel_through(error: BaseException) -> None:
    label = f"unit-retry-{type(error).__name__}"
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        asyncio.run(policy(label).call(attempt, label))
    assert len(calls) == 1
    assert sample("popsync_step_retries_total", label) == 0


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.InterfaceError("the connection is closed"),
        DeliveryFailed("3 undelivered, failures: ['_MSG_TIMED_OUT']"),
        KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True)),
        TimeoutError(),
        ConnectionResetError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_infrastructure_faults_are_retried(error: Exception) -> None:
    assert is_infrastructure_error(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        KeyError("pin"),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.InvalidTextRepresentation("bad input syntax"),
        DeliveryFailed("1 undelivered, failures: ['MSG_SIZE_TOO_LARGE']", permanent=True),
        KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bugs_and_refused_messages_are_not_retried(error: Exception) -> None:
    assert not is_infrastructure_error(error)
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        asyncio.run(policy("unit-retry-bug").call(attempt, "bug"))
    assert calls == [1]


# --- one policy per worker, shared by the processors of its topics --------------------------


def test_a_worker_waits_while_any_of_its_agents_does() -> None:
    worker = "unit-two-agents"
    shared = RetryPolicy(FAST, worker)
    release = {"a": asyncio.Event(), "b": asyncio.Event()}

    def attempt(agent: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            if not release[agent].is_set():
                raise ConnectionError("database unreachable")

        return run

    def waiting() -> float | None:
        return sample("popsync_waiting_for_infrastructure", worker)

    async def scenario() -> None:
        a = asyncio.ensure_future(shared.call(attempt("a"), f"{worker}:a"))
        b = asyncio.ensure_future(shared.call(attempt("b"), f"{worker}:b"))
        await asyncio.sleep(0.02)
        assert waiting() == 1
        release["a"].set()
        await a
        assert waiting() == 1  # b still waits
        release["b"].set()
        await b
        assert waiting() == 0

    asyncio.run(scenario())
    assert (sample("popsync_step_retries_total", worker)) >= 2
    assert sample("popsync_step_retries_total", f"{worker}:a") == 0


def test_a_wait_for_a_backfill_is_retried_and_shown_as_such_not_as_a_fault() -> None:
    """The synchronizer meeting the merge fence waits like a fault passes, but the gauge
    that pages operators stays 0: a backfill is planned."""
    from popsync.adapters.postgres.sync_state import BackfillRunning

    label = "unit-retry-fenced"
    seen: list[tuple[float, float]] = []
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) > 1:
            seen.append(
                (
                    sample("popsync_merge_fenced", label),
                    sample("popsync_waiting_for_infrastructure", label),
                )
            )
        if len(calls) < 3:
            raise BackfillRunning("a backfill is merging citizens")
        return "merged"

    assert is_infrastructure_error(BackfillRunning("x"))
    assert asyncio.run(policy(label).call(attempt, label)) == "merged"
    assert seen == [(1.0, 0.0), (1.0, 0.0)]
    assert sample("popsync_merge_fenced", label) == 0.0
