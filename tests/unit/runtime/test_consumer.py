"""How a worker's consumer cuts what it fetched into batches, and how its app is set up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types.tuples import ConsumerMessage

from popsync.runtime.app import make_app
from popsync.runtime.consumer import BatchConsumer, Batching, by_topic, chunks
from popsync.settings import Settings


def fetched(*offsets: int, topic: str = "t") -> list[ConsumerMessage]:
    return [ConsumerMessage(topic, 0, o, 0.0, 0, None, b"k", b"v", None) for o in offsets]


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
