"""faust's Kafka consumer, handing each fetched batch straight to its topic's step.

faust delivers what it fetched one message at a time: a conductor, a channel queue, a
stream, the `take_events` buffer and, for every message, two asyncio tasks in
`Service.wait_first`: far more CPU per message than the steps themselves (bench/README.md,
`faust consumption alone`), and popsync's steps take whole batches anyway.
`BatchConsumer` replaces only that delivery loop (`_drain_messages`): it groups what
one fetch returned (topped up for at most the batch window) by topic and awaits the
topic's handler with each batch.

It also sets the longest fetch wait (`KafkaSettings.fetch_max_wait_ms`), which faust
fixes. Everything else stays faust's, unchanged: group membership and rebalances, flow
control, the tracking of unacked messages that a rebalance waits for before it gives
partitions away (`stream_wait_empty`), read offsets, gaps, acks and commits. faust's
own loop is the model for this one (faust-streaming 0.15, `Consumer._drain_messages`);
the version is pinned in pyproject.toml for that reason.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka
from faust.types.tuples import TP, Message

# A handler makes a batch durable and then acks its messages with `consumer.ack`.
# Unacked messages are never committed: a handler that must not finish a batch
# (a drain began) simply never returns, or ends the process.
BatchHandler = Callable[[Sequence[Message], Any], Awaitable[None]]


@dataclass(frozen=True)
class Batching:
    size: int  # most messages one handler call takes
    window_seconds: float  # longest wait, after the first message, to fill a batch


class NoBatchHandler(RuntimeError):
    """A message arrived on a topic that no step was registered for."""


class BatchConsumer(aiokafka.Consumer):
    """faust's aiokafka consumer whose fetched batches go straight to batch handlers."""

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        app = cast(BatchApp, self.app)
        stopping = (self._stopped.is_set, fetcher._stopped.is_set)
        try:
            while not any(stopped() for stopped in stopping):
                await self.sleep(0)  # a fetch that returns at once must not starve the loop
                batch = await self._take_batch(app.batching)
                for topic, messages in by_topic(batch):
                    handler = app.batch_handlers.get(topic)
                    if handler is None:
                        raise NoBatchHandler(f"no batch step for topic {topic!r}")
                    for chunk in chunks(messages, app.batching.size):
                        await handler(chunk, self)
                    await self._commit_if_due()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _take_batch(self, batching: Batching) -> list[Message]:
        """What the next fetches bring: until `size` messages, the window ends, or flow stops.

        Flow stops when a rebalance begins; what was taken is then handed on at once, and
        the rebalance waits (`wait_empty`) until it is acked.
        """
        taken: list[Message] = []
        deadline: float | None = None
        while True:
            timeout = 1.0 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                return taken
            async for tp, message in self.getmany(timeout=timeout):
                if await self._take(tp, message):
                    taken.append(message)
            if not taken or len(taken) >= batching.size or not self.flow_active:
                return taken
            if deadline is None:
                deadline = time.monotonic() + batching.window_seconds

    async def _take(self, tp: TP, message: Message) -> bool:
        """faust's per-message bookkeeping: skip what was read already, record gaps
        (so commits can pass them), track the message as unacked, move the read offset."""
        offset = message.offset
        read = self._read_offset[tp]
        if read is not None and offset < read:
            return False
        if read and offset - read > 1 and self.app.topics.acks_enabled_for(message.topic):
            await self._add_gap(tp, read + 1, offset)
        self.track_message(message)
        self._read_offset[tp] = offset
        return True

    async def _commit_if_due(self) -> None:
        """faust's `broker_commit_every`: commit once that many messages were acked."""
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


class BatchConsumerThread(aiokafka.AIOKafkaConsumerThread):
    """faust's thread running the aiokafka consumer, with our longest fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust fixes it; aiokafka reads it when the consumer starts.
        consumer._fetch_max_wait_ms = cast(BatchApp, self.app).fetch_max_wait_ms
        return consumer


class BatchTransport(aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A faust app whose consumer hands fetched batches to `batch_handlers` (by topic)."""

    def __init__(
        self, *args: Any, batching: Batching, fetch_max_wait_ms: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batching = batching
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.batch_handlers: dict[str, BatchHandler] = {}

    def _new_transport(self) -> Any:
        # faust picks the transport by URL scheme; ours differs only in its consumer.
        return BatchTransport(self.conf.broker_consumer, self)

    def _create_directories(self) -> None:
        # faust makes `<app id>-data/` in the working directory at start, for tables on
        # disk. popsync keeps no state in faust (an in-memory store, no tables: what must
        # survive is in PostgreSQL), so that directory would only ever be empty clutter
        # wherever a worker runs (the repository, for tests and the demo).
        pass


def by_topic(batch: Sequence[Message]) -> Iterator[tuple[str, list[Message]]]:
    """The batch split by topic, each part in fetch order (so per partition in order)."""
    parts: dict[str, list[Message]] = {}
    for message in batch:
        parts.setdefault(message.topic, []).append(message)
    return iter(parts.items())


def chunks(messages: Sequence[Message], size: int) -> Iterator[list[Message]]:
    iterator = iter(messages)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def batch_handlers(app: faust.App) -> dict[str, BatchHandler]:
    """Where the steps of `app` (a `BatchApp`) are registered, by topic."""
    return cast(BatchApp, app).batch_handlers
