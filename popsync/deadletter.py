"""Dead letters: a message a worker cannot process, parked whole with the reason.

The value is a `DeadLetter` record (original key and bytes, topic, partition,
offset, stage, reason code, message); the same facts ride as headers so that
operators can filter without decoding. Key = the original key, so a replay
keeps the citizen's partition.
"""

from __future__ import annotations

from datetime import UTC, datetime

from popsync.adapters.kafka import Headers, OutboundMessage
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime import InboundMessage

DEAD_LETTER_CODEC = Codec(m.DeadLetter)


def dead_letter(
    message: InboundMessage,
    *,
    topic: str,
    stage: str,
    reason: str,
    description: str,
    event: m.RegistryEvent | None = None,
    now: datetime | None = None,
) -> OutboundMessage:
    """The dead-letter message for `message`; `description` must hold no personal data."""
    record = m.DeadLetter(
        original_key=message.key,
        original_value=message.value,
        original_topic=message.topic,
        original_partition=message.partition,
        original_offset=message.offset,
        stage=stage,
        reason_code=reason,
        message=description[:500],
        event_id=event.event_id if event else None,
        source_registry=event.source_registry.value if event else None,
        source_province=event.source_province if event else None,
        failed_at=now or datetime.now(UTC),
    )
    headers: Headers = [
        ("popsync.stage", stage.encode()),
        ("popsync.reason", reason.encode()),
        ("popsync.original.topic", message.topic.encode()),
        ("popsync.original.partition", str(message.partition).encode()),
        ("popsync.original.offset", str(message.offset).encode()),
    ]
    return OutboundMessage(topic, message.key, DEAD_LETTER_CODEC.encode(record), headers)
