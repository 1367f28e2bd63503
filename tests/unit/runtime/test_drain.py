"""The drain on SIGTERM: batches in flight, the grace period, the commit, the watchdog."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from popsync.runtime.drain import (
    DrainController,
    DrainOutcome,
    DrainResult,
    drain,
    end_offsets,
    uncommitted,
    watchdog_exit_code,
)
from popsync.runtime.exits import EXIT_DRAINED, EXIT_UNFINISHED_BATCH
from popsync.runtime.messages import InboundMessage


def message(offset: int, partition: int = 0, topic: str = "t") -> InboundMessage:
    return InboundMessage(topic, partition, offset, b"k", b"v")


# --- offsets ------------------------------------------------------------------------------


def test_end_offsets_are_one_past_the_last_message_of_each_partition() -> None:
    batch = [message(7), message(3, partition=1), message(5), message(4, partition=1)]
    assert end_offsets(batch) == {("t", 0): 8, ("t", 1): 5}


def test_uncommitted_lists_what_the_broker_does_not_cover() -> None:
    durable = {("t", 0): 8, ("t", 1): 5, ("t", 2): 1}
    assert uncommitted(durable, {("t", 0): 8, ("t", 1): 4}) == {("t", 1): 5, ("t", 2): 1}
    assert uncommitted(durable, {("t", 0): 9, ("t", 1): 5, ("t", 2): 1}) == {}


# --- the drain controller ----------------------------------------------------------------


def test_the_signal_only_sets_the_flag_once() -> None:
    controller = DrainController()
    assert not controller.draining
    assert controller.begin() is True
    assert controller.draining and controller.began_at is not None
    assert controller.begin() is False  # a repeated signal changes nothing


def test_batches_in_flight_are_counted_and_finished_ones_recorded() -> None:
    async def scenario() -> None:
        controller = DrainController()
        await asyncio.wait_for(controller.wait_idle(), 0.1)  # idle at first
        with controller.batch():
            assert controller.in_flight == 1
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(controller.wait_idle(), 0.05)
            controller.finished([message(3), message(4)])
        assert controller.in_flight == 0
        await asyncio.wait_for(controller.wait_idle(), 0.1)
        controller.finished([message(1)])  # an older batch never moves the point back
        assert controller.durable == {("t", 0): 5}

    asyncio.run(scenario())


def test_a_failed_batch_leaves_the_controller_idle_and_records_nothing() -> None:
    controller = DrainController()
    with pytest.raises(RuntimeError), controller.batch():
        raise RuntimeError("step failed")
    assert controller.in_flight == 0
    assert controller.durable == {}


@dataclass
class FakeCommit:
    result: bool = True
    error: BaseException | None = None
    hang: bool = False
    calls: int = 0

    async def __call__(self) -> bool:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(60)
        if self.error is not None:
            raise self.error
        return self.result


def run_drain(
    commit: FakeCommit,
    grace: float,
    in_flight_for: float | None = None,
    commit_timeout: float = 1.0,
) -> tuple[DrainResult, DrainController]:
    """Drain while one batch stays in flight for `in_flight_for` seconds (None: no batch)."""

    async def scenario() -> tuple[DrainResult, DrainController]:
        controller = DrainController()
        started = asyncio.Event()

        async def batch() -> None:
            with controller.batch():
                started.set()
                await asyncio.sleep(in_flight_for or 0)
                controller.finished([message(9)])

        task = asyncio.create_task(batch()) if in_flight_for is not None else None
        if task is not None:
            await started.wait()
        controller.begin()
        result = await drain(controller, grace, commit, commit_timeout=commit_timeout)
        if task is not None:
            task.cancel()
        return result, controller

    return asyncio.run(scenario())


def test_drain_with_nothing_in_flight_commits_and_exits_0() -> None:
    commit = FakeCommit()
    result, controller = run_drain(commit, grace=5)
    assert result.outcome is DrainOutcome.DRAINED
    assert result.outcome.exit_code == EXIT_DRAINED == 0
    assert commit.calls == 1 and controller.committed
    assert result.seconds < 1


def test_drain_waits_for_the_batch_in_flight_then_commits() -> None:
    commit = FakeCommit()
    result, controller = run_drain(commit, grace=5, in_flight_for=0.3)
    assert result.outcome is DrainOutcome.DRAINED
    assert 0.25 <= result.seconds < 2
    assert commit.calls == 1
    assert controller.durable == {("t", 0): 10}  # the batch finished before the commit


def test_past_the_grace_period_nothing_is_committed_and_the_exit_code_is_75() -> None:
    commit = FakeCommit()
    started = time.monotonic()
    result, controller = run_drain(commit, grace=0.3, in_flight_for=30)
    assert result.outcome is DrainOutcome.GRACE_EXCEEDED
    assert result.outcome.exit_code == EXIT_UNFINISHED_BATCH == 75
    assert 0.3 <= result.seconds < 1 and time.monotonic() - started < 2
    assert commit.calls == 0 and not controller.committed


@pytest.mark.parametrize(
    "commit",
    [
        FakeCommit(result=False),
        FakeCommit(error=ConnectionError("broker gone")),
        FakeCommit(hang=True),
    ],
    ids=["not-confirmed", "error", "hangs"],
)
def test_an_unconfirmed_commit_exits_75(commit: FakeCommit) -> None:
    result, controller = run_drain(commit, grace=5, commit_timeout=0.2)
    assert result.outcome is DrainOutcome.COMMIT_FAILED
    assert result.outcome.exit_code == EXIT_UNFINISHED_BATCH
    assert not controller.committed
    assert result.seconds < 1


def test_the_watchdog_exits_0_only_after_a_confirmed_commit() -> None:
    controller = DrainController()
    controller.begin()
    assert watchdog_exit_code(controller) == EXIT_UNFINISHED_BATCH
    controller.committed = True
    assert watchdog_exit_code(controller) == EXIT_DRAINED
    with controller.batch():
        assert watchdog_exit_code(controller) == EXIT_UNFINISHED_BATCH
