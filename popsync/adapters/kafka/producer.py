"""confluent-kafka: the producer of every popsync output (idempotent, batched, flushed per
step); it implements `popsync.runtime.ports.Producer`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, Producer

from popsync.adapters.kafka.logs import CLIENT_LOGGER
from popsync.runtime.messages import OutboundMessage
from popsync.settings import KafkaSettings
from popsync.topology import MAX_DEAD_LETTER_BYTES

# Delivery errors that no retry can mend: the message itself is refused.
_PERMANENT = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "INVALID_MSG",
        "INVALID_RECORD",
        "CORRUPT_MESSAGE",
        "RECORD_LIST_TOO_LARGE",
    }
)


class DeliveryFailed(RuntimeError):
    """The broker did not confirm every message of a step.

    `permanent` when some message was refused for what it is (too large, invalid):
    retrying the same messages would fail again. Otherwise the step must be retried.
    """

    def __init__(self, text: str, permanent: bool = False) -> None:
        super().__init__(text)
        self.permanent = permanent


def producer_config(kafka: KafkaSettings, **overrides: str | int) -> dict[str, object]:
    """Idempotent producer: retries never duplicate or reorder a partition's messages.
    librdkafka's log lines go to `CLIENT_LOGGER` (its `logger` key)."""
    return {
        **kafka.librdkafka(),
        "logger": CLIENT_LOGGER,
        "enable.idempotence": "true",
        "acks": "all",
        "linger.ms": kafka.linger_ms,
        "compression.type": "lz4",
        # librdkafka's own cap (1,000,000 by default) must not be below the largest
        # dead letter, or parking a large event would fail on every retry.
        "message.max.bytes": MAX_DEAD_LETTER_BYTES + 64 * 1024,
        **overrides,
    }


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
            names = sorted(set(failures))
            raise DeliveryFailed(
                f"{remaining} undelivered, failures: {names[:5]}",
                permanent=bool(_PERMANENT.intersection(names)),
            )

    async def send_all(self, messages: Sequence[OutboundMessage], timeout: float = 30.0) -> None:
        """Produce then flush off the event loop; raises DeliveryFailed unless all landed."""
        for message in messages:
            self.produce(message)
        await asyncio.to_thread(self.flush_sync, timeout)

    def close(self) -> None:
        self._producer.flush(10)
