"""A worker: one batch through its processor, acks, the drain's hold, stops, resources."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types.tuples import ConsumerMessage

from popsync import topology
from popsync.runtime import exits as exits_module
from popsync.runtime.collector import tune_garbage_collector
from popsync.runtime.drain import DrainController
from popsync.runtime.exits import EXIT_UNFINISHED_BATCH, StopWorker
from popsync.runtime.messages import InboundMessage
from popsync.runtime.worker import Worker
from popsync.settings import WORKER_NAMES, Settings
from tests.fakes import RecordingProducer


def fetched(*offsets: int, topic: str = "t") -> list[ConsumerMessage]:
    return [ConsumerMessage(topic, 0, o, 0.0, 0, None, b"k", b"v", None) for o in offsets]


@dataclass
class FakeConsumer:
    """faust's consumer side of an ack: what would become committable."""

    acked: list[int] = field(default_factory=list)

    def ack(self, msg: ConsumerMessage) -> bool:
        msg.acked = True
        self.acked.append(msg.offset)
        return True


Process = Callable[[Sequence[InboundMessage]], Awaitable[None]]


def registered(process: Process, label: str) -> tuple[Any, Worker]:
    """`process` subscribed to topic "t" of a worker, as each worker does; its handler."""
    worker = Worker(Settings(), "validator")
    worker.subscribe("t", process)
    return worker.app.batch_handlers["t"], worker


def test_registering_a_step_subscribes_the_worker_to_its_topic() -> None:
    async def step(batch: Sequence[InboundMessage]) -> None:
        pass

    _, worker = registered(step, "unit-batch-subscribe")
    assert [topic.get_topic_name() for topic in worker.app.topics] == ["t"]


def test_a_batch_is_acked_once_its_step_returned() -> None:
    seen: list[list[int]] = []
    consumer = FakeConsumer()

    async def step(batch: Sequence[InboundMessage]) -> None:
        assert consumer.acked == [m.offset for b in seen for m in fetched(*b)]  # not before
        seen.append([m.offset for m in batch])

    handle, worker = registered(step, "unit-batch-ack")

    async def scenario() -> None:
        await handle(fetched(0, 1), consumer)
        await handle(fetched(2), consumer)

    asyncio.run(scenario())
    assert seen == [[0, 1], [2]]
    assert consumer.acked == [0, 1, 2]
    assert worker.drain.durable == {("t", 0): 3}


def test_draining_finishes_the_batch_in_flight_and_never_acks_the_next() -> None:
    seen: list[list[int]] = []
    consumer = FakeConsumer()
    controller: DrainController | None = None

    async def step(batch: Sequence[InboundMessage]) -> None:
        seen.append([m.offset for m in batch])
        assert controller is not None
        controller.begin()  # SIGTERM arrives while this batch is in flight
        await asyncio.sleep(0.05)

    handle, worker = registered(step, "unit-batch-drain")
    controller = worker.drain
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

    monkeypatch.setattr(exits_module, "exit_now", fake_exit)
    return codes


def test_stop_worker_exits_at_once_with_its_code_and_acks_nothing(exits: list[int]) -> None:
    consumer = FakeConsumer()

    async def step(batch: Sequence[InboundMessage]) -> None:
        raise StopWorker("dead-letter limit", exit_code=70)

    handle, worker = registered(step, "unit-batch-stop")

    async def scenario() -> None:
        with pytest.raises(Exited):
            await handle(fetched(0), consumer)

    asyncio.run(scenario())
    assert exits == [70]
    assert consumer.acked == []
    assert worker.drain.durable == {}
    assert worker.drain.in_flight == 0


def test_a_step_cancelled_before_it_was_durable_exits_without_acking(exits: list[int]) -> None:
    consumer = FakeConsumer()
    started = asyncio.Event()

    async def step(batch: Sequence[InboundMessage]) -> None:
        started.set()
        await asyncio.sleep(60)

    handle, worker = registered(step, "unit-batch-cancel")

    async def scenario() -> None:
        task = asyncio.ensure_future(handle(fetched(0, 1), consumer))
        await started.wait()
        task.cancel()
        with pytest.raises(Exited):
            await task

    asyncio.run(scenario())
    assert exits == [EXIT_UNFINISHED_BATCH]
    assert consumer.acked == []
    assert worker.drain.durable == {}


@pytest.mark.parametrize("name", WORKER_NAMES)
def test_a_step_is_subscribed_to_the_topics_the_topology_says_its_worker_consumes(
    name: Any,
) -> None:
    settings = Settings()
    worker = Worker(settings, name)

    async def step(batch: Sequence[InboundMessage]) -> Any:
        raise AssertionError("not called")

    worker.process_with(step, RecordingProducer())
    subscribed = sorted(topic.get_topic_name() for topic in worker.app.topics)
    assert subscribed == sorted(topology.consumed_topics(settings, name))
    assert sorted(worker.app.batch_handlers) == subscribed


class Resource:
    def __init__(self, log: list[str], name: str, fails: bool = False) -> None:
        self.log, self.name, self.fails = log, name, fails

    def close(self) -> None:
        self.log.append(self.name)
        if self.fails:
            raise RuntimeError("close failed")


class AsyncResource:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    async def close(self) -> None:
        self.log.append(self.name)


def test_closing_closes_every_resource_once_the_last_opened_first() -> None:
    closed: list[str] = []
    worker = Worker(Settings(), "validator")
    worker.closing(Resource(closed, "producer"))
    worker.closing(Resource(closed, "broken", fails=True))  # must not keep the next open
    worker.closing(AsyncResource(closed, "database"))
    asyncio.run(worker.close())
    asyncio.run(worker.close())
    assert closed == ["database", "broken", "producer"]


@pytest.mark.parametrize("threshold", [50_000, 0])
def test_garbage_collection_is_tuned_and_start_up_objects_frozen(threshold: int) -> None:
    before, enabled = gc.get_threshold(), gc.isenabled()
    try:
        tune_garbage_collector(threshold)
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
