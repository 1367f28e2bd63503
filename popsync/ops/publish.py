"""Registry side: encode contract events and publish them, keyed by PIN.

Keying by PIN keeps one citizen's events in one partition, so they are read in
the order the registry sent them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.contract.json_form import event_from_json
from popsync.runtime.messages import OutboundMessage

EVENT_CODEC = Codec(m.RegistryEvent)


@dataclass(frozen=True)
class BadLine:
    line_number: int
    reason: str
    message: str


@dataclass
class PublishReport:
    published: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)


class Publisher:
    def __init__(self, producer: BatchProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def send(self, key: bytes | None, event: m.RegistryEvent) -> None:
        self._producer.produce(OutboundMessage(self._topic, key, EVENT_CODEC.encode(event)))

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Bytes as they are: for replaying dead letters and testing bad input."""
        self._producer.produce(OutboundMessage(self._topic, key, value))

    def flush(self) -> None:
        self._producer.flush_sync(timeout=60)

    def publish(self, events: Iterable[tuple[bytes | None, m.RegistryEvent]]) -> int:
        count = 0
        for key, event in events:
            self.send(key, event)
            count += 1
        self.flush()
        return count


def read_jsonl(
    path: Path, source: m.SourceRegistry
) -> Iterator[tuple[int, m.RegistryEvent | BadLine]]:
    """Each line of `path` as a contract event, or the reason it is not one."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = event_from_json(json.loads(line))
            except json.JSONDecodeError as exc:
                yield number, BadLine(number, "NOT_JSON", f"not JSON: {exc.msg}")
                continue
            except DecodeError as exc:
                yield number, BadLine(number, exc.reason, str(exc))
                continue
            if event.source_registry is not source:
                yield (
                    number,
                    BadLine(
                        number,
                        "SOURCE_MISMATCH",
                        f"line is from {event.source_registry.value}, publishing as {source.value}",
                    ),
                )
                continue
            yield number, event


def publish_jsonl(publisher: Publisher, path: Path, source: m.SourceRegistry) -> PublishReport:
    """Publish every valid line; bad lines are reported and the rest still go."""
    report = PublishReport()
    for _, item in read_jsonl(path, source):
        if isinstance(item, BadLine):
            report.bad_lines.append(item)
            continue
        key = item.subject_pin.encode() if item.subject_pin else None
        publisher.send(key, item)
        report.published += 1
    publisher.flush()
    return report
