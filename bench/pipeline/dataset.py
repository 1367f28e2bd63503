"""The benchmark's stream: simulated once per (seed, size), kept on disk, published once.

Events come from the same simulator as the demo (coherent lives, legacy codes, 1% invalid,
2% re-sent, 5% out of order). Only the encoded bytes are kept, so a 1,000,000-event stream
costs the harness about 300 MB rather than gigabytes of models. The expected number of
history rows (distinct valid events per citizen) is computed once with the validator's own
rules and stored with the bytes.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer

from popsync.adapters.kafka.producer import producer_config
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.dev.publishers import dev_signers
from popsync.dev.simulate.generator import simulate
from popsync.domain.rules import RuleViolation, check_event
from popsync.runtime.messages import Headers
from popsync.settings import KafkaSettings

EVENT_CODEC = Codec(m.RegistryEvent)
EVENTS_PER_CITIZEN = 5.6  # what the simulator produces on average (5.73 at seed 2025)
_FRAME = struct.Struct(">II")  # key length (NONE_KEY: no key), value length
_NONE_KEY = 0xFFFFFFFF
SKEW = timedelta(seconds=300)


@dataclass
class Dataset:
    seed: int
    citizens: int
    keys: list[bytes | None]
    values: list[bytes]
    event_ids: list[str | None]  # None: the bytes do not decode (an invalid event)
    expected_history: int  # distinct valid (pin, event id): the store's history rows
    generated_at: datetime
    # Each event signed as its registry signs it (the development publishers' keys); empty
    # for bytes that do not decode. Made when the stream is generated or read, not stored.
    headers: list[Headers] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def signed(self) -> Dataset:
        signers = dev_signers()
        self.headers = []
        for key, value, event in zip(self.keys, self.values, _decoded(self.values), strict=True):
            signed: Headers = [*signers.headers(key, value, event)] if event is not None else []
            self.headers.append(signed)
        return self


def _decoded(values: list[bytes]) -> Iterator[m.RegistryEvent | None]:
    for value in values:
        try:
            yield EVENT_CODEC.decode(value)
        except DecodeError:
            yield None


def load_or_generate(events: int, seed: int, cache_dir: Path) -> Dataset:
    path = cache_dir / f"stream-{seed}-{events}.bin"
    if path.exists():
        return _read(path).signed()
    dataset = generate(events, seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write(dataset, path)
    return dataset.signed()


def generate(events: int, seed: int) -> Dataset:
    """`events` messages of a simulated stream, cut where it reaches that size."""
    now = datetime.now(UTC)
    citizens = max(1, math.ceil(events / EVENTS_PER_CITIZEN))
    started = time.monotonic()
    messages = simulate(citizens, seed=seed, now=now)
    while len(messages) < events:  # a seed that yields fewer events per citizen
        citizens = math.ceil(citizens * 1.05 * events / len(messages))
        messages = simulate(citizens, seed=seed, now=now)
    messages = messages[:events]
    keys = [message.key for message in messages]
    values = [EVENT_CODEC.encode(message.event) for message in messages]
    event_ids = [message.event.event_id for message in messages]
    expected = expected_history(((msg.key, msg.event) for msg in messages), now)
    print(
        f"generated {len(values):,} events ({citizens:,} citizens) in "
        f"{time.monotonic() - started:.0f} s"
    )
    return Dataset(seed, citizens, keys, values, list(event_ids), expected, now)


def expected_history(
    events: Iterable[tuple[bytes | None, m.RegistryEvent | None]], now: datetime
) -> int:
    """Distinct (PIN, event id) among the events the validator accepts: the store's history
    rows. `None` stands for a value that does not decode."""
    seen: set[tuple[str, str]] = set()
    for key, event in events:
        if event is None:
            continue
        try:
            checked = check_event(event, key, now, SKEW)
        except RuleViolation:
            continue
        seen.add((checked.subject_pin or "", checked.event_id))
    return len(seen)


def _write(dataset: Dataset, path: Path) -> None:
    header = {
        "seed": dataset.seed,
        "citizens": dataset.citizens,
        "events": len(dataset),
        "expected_history": dataset.expected_history,
        "generated_at": dataset.generated_at.isoformat(),
        "event_ids": dataset.event_ids,
    }
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        encoded = json.dumps(header).encode()
        out.write(struct.pack(">I", len(encoded)) + encoded)
        for key, value in zip(dataset.keys, dataset.values, strict=True):
            out.write(_FRAME.pack(_NONE_KEY if key is None else len(key), len(value)))
            out.write(key or b"")
            out.write(value)
    tmp.replace(path)


def _read(path: Path) -> Dataset:
    data = path.read_bytes()
    (size,) = struct.unpack_from(">I", data, 0)
    header = json.loads(data[4 : 4 + size])
    keys: list[bytes | None] = []
    values: list[bytes] = []
    position = 4 + size
    for _ in range(header["events"]):
        key_size, value_size = _FRAME.unpack_from(data, position)
        position += _FRAME.size
        if key_size == _NONE_KEY:
            keys.append(None)
        else:
            keys.append(data[position : position + key_size])
            position += key_size
        values.append(data[position : position + value_size])
        position += value_size
    return Dataset(
        header["seed"],
        header["citizens"],
        keys,
        values,
        header["event_ids"],
        header["expected_history"],
        datetime.fromisoformat(header["generated_at"]),
    )


@dataclass(frozen=True)
class Published:
    topic: str
    ends: dict[int, int]  # partition -> offset after its last event
    seconds: float


def publish(kafka: KafkaSettings, topic: str, dataset: Dataset) -> Published:
    """Every event, keyed as the registries key them; the end offset of each partition."""
    producer = Producer(producer_config(kafka, **{"linger.ms": 20, "batch.size": 1_000_000}))
    ends: dict[int, int] = {}
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error.name())
            return
        partition, offset = message.partition() or 0, message.offset() or 0
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    started = time.monotonic()
    for key, value, headers in zip(dataset.keys, dataset.values, dataset.headers, strict=True):
        _produce(producer, topic, key, value, headers, delivered)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"publishing failed: {remaining} undelivered, {sorted(set(failures))}")
    return Published(topic, ends, time.monotonic() - started)


def _produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: Headers,
    callback: Callable[[KafkaError | None, Message], None],
) -> None:
    while True:
        try:
            producer.produce(
                topic, key=key, value=value, headers=headers or None, on_delivery=callback
            )
            return
        except BufferError:
            producer.poll(0.05)
