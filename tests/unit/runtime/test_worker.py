"""The batch loop without a broker: retries, the drain on SIGTERM and its grace period."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types.tuples import ConsumerMessage
from prometheus_client import REGISTRY

from popsync.runtime import worker as runtime
from popsync.runtime.consumer import BatchConsumer, Batching, batch_handlers, by_topic, chunks
from popsync.runtime.worker import (
    EXIT_DRAINED,
    EXIT_UNFINISHED_BATCH,
    DrainController,
    DrainOutcome,
    InboundMessage,
    StopWorker,
    drain,
    drain_controller,
    end_offsets,
    make_app,
    register_batch_step,
    retry_until_done,
    uncommitted,
    watchdog_exit_code,
)
from popsync.settings import Settings

FAST_RETRY = {"retry_initial_seconds": 0.001, "retry_max_seconds": 0.004}


def settings(**processing: Any) -> Settings:
    return Settings(processing={**FAST_RETRY, **processing})


def message(offset: int, partition: int = 0, topic: str = "t") -> InboundMessage:
    return InboundMessage(topic, partition, offset, b"k", b"v")


# --- retry_until_done -------------------------------------------------------------------


def sample(name: str, label: str) -> float:
    return REGISTRY.get_sample_value(name, {"worker": label}) or 0.0


def test_retry_until_done_retries_infrastructure_faults_then_succeeds() -> None:
    label = "unit-retry-ok"
    calls: list[int] = []
    waiting_while_failing: list[float] = []

    async def attempt() -> None:
        calls.append(1)
        if len(calls) > 1:
            waiting_while_failing.append(sample("popsync_waiting_for_infrastructure", label))
        if len(calls) < 4:
            raise ConnectionError("database unreachable")

    asyncio.run(retry_until_done(attempt, label, settings()))
    assert len(calls) == 4
    assert sample("popsync_step_retries_total", label) == 3
    assert waiting_while_failing == [1.0, 1.0, 1.0]
    assert sample("popsync_waiting_for_infrastructure", label) == 0


def test_retry_until_done_backs_off_exponentially_up_to_the_maximum(
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
            raise OSError("broker down")

    config = settings(retry_initial_seconds=0.5, retry_max_seconds=3.0)
    asyncio.run(retry_until_done(attempt, "unit-retry-backoff", config))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("error", [StopWorker("dead-letter limit"), asyncio.CancelledError()])
def test_retry_until_done_lets_stop_and_cancel_through(error: BaseException) -> None:
    label = f"unit-retry-{type(error).__name__}"
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        asyncio.run(retry_until_done(attempt, label, settings()))
    assert len(calls) == 1
    assert sample("popsync_step_retries_total", label) == 0


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
) -> tuple[runtime.DrainResult, DrainController]:
    """Drain while one batch stays in flight for `in_flight_for` seconds (None: no batch)."""

    async def scenario() -> tuple[runtime.DrainResult, DrainController]:
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


# --- one batch through its step, with faust's messages -------------------------------------


@dataclass
class FakeConsumer:
    """faust's consumer side of an ack: what would become committable."""

    acked: list[int] = field(default_factory=list)

    def ack(self, msg: ConsumerMessage) -> bool:
        msg.acked = True
        self.acked.append(msg.offset)
        return True


def fetched(*offsets: int, topic: str = "t") -> list[ConsumerMessage]:
    return [ConsumerMessage(topic, 0, o, 0.0, 0, None, b"k", b"v", None) for o in offsets]


Step = Callable[[Sequence[InboundMessage]], Awaitable[None]]


def registered(step: Step, label: str) -> tuple[Any, Any]:
    """`step` registered on a worker app as each worker does; its handler and the app."""
    config = settings()
    app = make_app(config, "validator")
    register_batch_step(app, "t", step, config, label)
    return batch_handlers(app)["t"], app


def test_registering_a_step_subscribes_the_worker_to_its_topic() -> None:
    async def step(batch: Sequence[InboundMessage]) -> None:
        pass

    _, app = registered(step, "unit-batch-subscribe")
    assert [topic.get_topic_name() for topic in app.topics] == ["t"]


def test_a_batch_is_acked_once_its_step_returned() -> None:
    seen: list[list[int]] = []
    consumer = FakeConsumer()

    async def step(batch: Sequence[InboundMessage]) -> None:
        assert consumer.acked == [m.offset for b in seen for m in fetched(*b)]  # not before
        seen.append([m.offset for m in batch])

    handle, app = registered(step, "unit-batch-ack")

    async def scenario() -> None:
        await handle(fetched(0, 1), consumer)
        await handle(fetched(2), consumer)

    asyncio.run(scenario())
    assert seen == [[0, 1], [2]]
    assert consumer.acked == [0, 1, 2]
    assert drain_controller(app).durable == {("t", 0): 3}


def test_draining_finishes_the_batch_in_flight_and_never_acks_the_next() -> None:
    seen: list[list[int]] = []
    consumer = FakeConsumer()
    controller: DrainController | None = None

    async def step(batch: Sequence[InboundMessage]) -> None:
        seen.append([m.offset for m in batch])
        assert controller is not None
        controller.begin()  # SIGTERM arrives while this batch is in flight
        await asyncio.sleep(0.05)

    handle, app = registered(step, "unit-batch-drain")
    controller = drain_controller(app)
    second = fetched(2, 3)

    async def scenario() -> None:
        await handle(fetched(0, 1), consumer)
        held = asyncio.ensure_future(handle(second, consumer))
        await asyncio.sleep(0.05)
        assert not held.done()  # held until the stop cancels it
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held

    asyncio.run(scenario())
    assert seen == [[0, 1]]  # the second batch never reached the step
    assert consumer.acked == [0, 1]  # and is not committable, even after the cancel
    assert controller.durable == {("t", 0): 2}
    assert controller.in_flight == 0
    assert all(not m.acked for m in second)


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(runtime, "_exit_now", fake_exit)
    return codes


def test_stop_worker_exits_at_once_with_its_code_and_acks_nothing(exits: list[int]) -> None:
    consumer = FakeConsumer()

    async def step(batch: Sequence[InboundMessage]) -> None:
        raise StopWorker("dead-letter limit", exit_code=70)

    handle, app = registered(step, "unit-batch-stop")

    async def scenario() -> None:
        with pytest.raises(Exited):
            await handle(fetched(0), consumer)

    asyncio.run(scenario())
    assert exits == [70]
    assert consumer.acked == []
    assert drain_controller(app).durable == {}
    assert drain_controller(app).in_flight == 0


def test_a_step_cancelled_before_it_was_durable_exits_without_acking(exits: list[int]) -> None:
    consumer = FakeConsumer()
    started = asyncio.Event()

    async def step(batch: Sequence[InboundMessage]) -> None:
        started.set()
        await asyncio.sleep(60)

    handle, app = registered(step, "unit-batch-cancel")

    async def scenario() -> None:
        task = asyncio.ensure_future(handle(fetched(0, 1), consumer))
        await started.wait()
        task.cancel()
        with pytest.raises(Exited):
            await task

    asyncio.run(scenario())
    assert exits == [EXIT_UNFINISHED_BATCH]
    assert consumer.acked == []
    assert drain_controller(app).durable == {}


# --- how a fetch is cut into batches ---------------------------------------------------------


def test_a_fetch_is_split_by_topic_keeping_each_partitions_order() -> None:
    interleaved = [
        ConsumerMessage(topic, partition, offset, 0.0, 0, None, None, b"v", None)
        for offset in range(3)
        for topic, partition in (("a", 0), ("b", 0), ("a", 1))
    ]
    parts = {topic: [(m.partition, m.offset) for m in ms] for topic, ms in by_topic(interleaved)}
    assert parts == {
        "a": [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)],
        "b": [(0, 0), (0, 1), (0, 2)],
    }


def test_a_topics_part_is_handed_on_in_batches_of_at_most_the_batch_size() -> None:
    offsets = [[m.offset for m in chunk] for chunk in chunks(fetched(*range(7)), 3)]
    assert offsets == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_worker_app_hands_fetched_batches_to_its_steps_and_sets_the_fetch_wait() -> None:
    config = Settings(
        processing={"batch_size": 123, "batch_window_seconds": 0.5},
        kafka={"fetch_max_wait_ms": 321},
    )

    async def scenario() -> tuple[Any, Any]:
        app = make_app(config, "validator")
        kafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)
        await kafka_consumer.stop()  # never started; releases its client
        return app, kafka_consumer

    app, kafka_consumer = asyncio.run(scenario())
    assert isinstance(app.consumer, BatchConsumer)
    assert app.batching == Batching(size=123, window_seconds=0.5)
    assert kafka_consumer._fetch_max_wait_ms == 321  # faust's own value is 1,500


# --- what every worker's process is set up with ---------------------------------------------


def test_a_worker_turns_at_most_max_poll_records_into_messages_at_once() -> None:
    app = make_app(Settings(kafka={"max_poll_records": 1234}), "validator")
    assert app.conf.broker_max_poll_records == 1234


def test_a_worker_leaves_no_faust_data_directory_where_it_runs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app(Settings(), "validator")
    asyncio.run(app.on_first_start())  # where faust makes `<app id>-data/`
    assert app.conf.store.scheme == "memory"  # nothing of faust's is kept on disk
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threshold", [50_000, 0])
def test_garbage_collection_is_tuned_and_start_up_objects_frozen(threshold: int) -> None:
    before, enabled = gc.get_threshold(), gc.isenabled()
    try:
        runtime.tune_garbage_collector(threshold)
        assert gc.get_freeze_count() > 0
        if threshold:
            assert gc.get_threshold() == (threshold, *before[1:]) and gc.isenabled()
        else:
            assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        if enabled:
            gc.enable()
