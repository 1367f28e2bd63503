"""Reading a whole topic to its current end, for operator commands and checks."""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from popsync.adapters.kafka.logs import CLIENT_LOGGER
from popsync.settings import KafkaSettings


class TopicReadError(RuntimeError):
    """A topic could not be read to its end (missing, broken, or too slow)."""


class TopicMissing(TopicReadError):
    """The topic does not exist: not provisioned, or another name configured."""


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
        },
        logger=CLIENT_LOGGER,
    )
    try:
        # All topics, not just this one: asking for one by name may auto-create it.
        try:
            metadata = consumer.list_topics(timeout=min(timeout, 30))
        except KafkaException as exc:
            raise TopicReadError(f"cannot read the metadata of {topic}: {exc}") from exc
        if topic not in metadata.topics:
            raise TopicMissing(f"topic {topic} does not exist")
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
