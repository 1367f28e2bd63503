"""confluent-kafka: the producer of every popsync output (idempotent, batched, flushed per
step), and reading a whole topic to its current end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from popsync.settings import KafkaSettings
from popsync.topology import MAX_DEAD_LETTER_BYTES

Headers = list[tuple[str, str | bytes | None]]


class DeliveryFailed(RuntimeError):
    """The broker did not confirm every message of a step; the step must be retried."""


def producer_config(kafka: KafkaSettings, **overrides: str | int) -> dict[str, str | int]:
    """Idempotent producer: retries never duplicate or reorder a partition's messages."""
    return {
        **kafka.librdkafka(),
        "enable.idempotence": "true",
        "acks": "all",
        "linger.ms": kafka.linger_ms,
        "compression.type": "lz4",
        # librdkafka's own cap (1,000,000 by default) must not be below the largest
        # dead letter, or parking a large event would fail on every retry.
        "message.max.bytes": MAX_DEAD_LETTER_BYTES + 64 * 1024,
        **overrides,
    }


@dataclass
class OutboundMessage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


class BatchProducer:
    """Sends a step's outputs and waits until the broker has them all."""

    def __init__(self, kafka: KafkaSettings, **overrides: str | int) -> None:
        self._producer = Producer(producer_config(kafka, **overrides))
        self._failures: list[str] = []

    def _on_delivery(self, error: KafkaError | None, _: Message) -> None:
        if error is not None:
            self._failures.append(error.name())

    def produce(self, message: OutboundMessage) -> None:
        while True:
            try:
                self._producer.produce(
                    message.topic,
                    key=message.key,
                    value=message.value,
                    headers=message.headers or None,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                # Local queue full: let deliveries drain instead of growing memory.
                self._producer.poll(0.1)

    def flush_sync(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryFailed(f"{remaining} undelivered, failures: {sorted(set(failures))[:5]}")

    async def send_all(self, messages: Sequence[OutboundMessage], timeout: float = 30.0) -> None:
        """Produce then flush off the event loop; raises DeliveryFailed unless all landed."""
        for message in messages:
            self.produce(message)
        await asyncio.to_thread(self.flush_sync, timeout)

    def close(self) -> None:
        self._producer.flush(10)


class TopicReadError(RuntimeError):
    """A topic could not be read to its end (missing, broken, or too slow)."""


_GIVE_UP = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
}


def read_to_end(
    kafka: KafkaSettings, topic: str, timeout: float
) -> Iterator[tuple[int, int, bytes | None]]:
    """Every record of `topic` as (partition, offset, value), up to each partition's EOF."""
    consumer = Consumer(
        {
            **kafka.librdkafka(),
            "group.id": f"{kafka.client_id}-reader",  # never joined, never committed
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,  # an empty partition's EOF comes after one fetch wait
        }
    )
    try:
        # All topics, not just this one: asking for one by name may auto-create it.
        metadata = consumer.list_topics(timeout=min(timeout, 30))
        if topic not in metadata.topics:
            raise TopicReadError(f"topic {topic} does not exist")
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        open_partitions = set(partitions)
        deadline = time.monotonic() + timeout
        while open_partitions:
            if time.monotonic() > deadline:
                raise TopicReadError(
                    f"the end of {topic} partitions {sorted(open_partitions)} was not "
                    f"reached within {timeout:.0f}s"
                )
            for message in consumer.consume(500, 0.1):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    if error.fatal() or error.code() in _GIVE_UP:
                        raise TopicReadError(f"reading {topic}: {error.name()}")
                    continue  # transient (e.g. a lost connection): librdkafka retries
                partition, offset = message.partition(), message.offset()
                if partition is None or offset is None or partition not in open_partitions:
                    continue  # a partition whose end we reached: later records are not read
                if error is not None:  # partition EOF
                    open_partitions.discard(partition)
                    continue
                yield partition, offset, message.value()
    finally:
        consumer.close()
