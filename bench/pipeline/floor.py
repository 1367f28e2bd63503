"""The floor: what the hardware does with no validation and no merge.

confluent-kafka consumes the raw topic (assigned partitions, no group), fastavro decodes
each value into a plain dict, and each consumed batch goes into PostgreSQL with one COPY and
one commit. Nothing popsync adds (pydantic models, rules, identity, merge, three stages,
updates and history) is done, so popsync can only be slower; the ratio says by how much.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from fastavro import schemaless_reader

from bench.pipeline.dataset import EVENT_CODEC, Published
from popsync.contract.codec import HEADER_SIZE
from popsync.settings import Settings

TABLE = """
CREATE TABLE IF NOT EXISTS floor_events (
    event_id         text,
    subject_pin      text,
    event_type       text,
    source_registry  text,
    occurred_at      timestamptz,
    recorded_at      timestamptz,
    payload          jsonb,
    written_at       timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
COLUMNS = "event_id, subject_pin, event_type, source_registry, occurred_at, recorded_at, payload"
BATCH = 5_000


def run(settings: Settings, published: Published) -> dict[str, Any]:
    """Consume, decode and COPY every event of `published`; the rate from first to last commit."""
    dsn = settings.postgres.dsn.get_secret_value()
    with psycopg.connect(dsn) as conn:
        conn.execute(TABLE)
        conn.commit()
    consumer = Consumer(
        {
            **settings.kafka.librdkafka(),
            "group.id": "bench-floor",
            "enable.auto.commit": "false",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    schema = EVENT_CODEC.schema.parsed
    open_ends = dict(published.ends)
    consumer.assign(
        [TopicPartition(published.topic, p, OFFSET_BEGINNING) for p in sorted(open_ends)]
    )
    consumed = undecodable = 0
    first_commit = last_commit = 0.0
    try:
        with psycopg.connect(dsn) as conn:
            while open_ends:
                messages = consumer.consume(BATCH, 1.0)
                rows: list[tuple[Any, ...]] = []
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise RuntimeError(f"floor: {error.name()}")
                    partition, offset = message.partition() or 0, message.offset() or 0
                    if offset + 1 >= open_ends.get(partition, 0):
                        open_ends.pop(partition, None)
                    consumed += 1
                    row = _row(message.value(), schema)
                    if row is None:
                        undecodable += 1
                    else:
                        rows.append(row)
                if not rows:
                    continue
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY floor_events ({COLUMNS}) FROM STDIN") as copy,
                ):
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
                last_commit = time.time()
                first_commit = first_commit or last_commit
    finally:
        consumer.close()
    return {
        "events": consumed,
        "undecodable": undecodable,
        "first_write": first_commit,
        "last_write": last_commit,
    }


def _row(value: bytes | None, schema: Any) -> tuple[Any, ...] | None:
    if not value or len(value) <= HEADER_SIZE:
        return None
    buffer = io.BytesIO(value)
    buffer.seek(HEADER_SIZE)
    try:
        datum: dict[str, Any] = schemaless_reader(  # type: ignore[assignment]
            buffer, schema, None, return_record_name=True
        )
    except Exception:  # noqa: BLE001 - the floor just counts what it cannot read
        return None
    return row_of(datum)


def row_of(datum: dict[str, Any]) -> tuple[Any, ...]:
    """A decoded event as the floor's row (the stream's floor and the backfill's)."""
    payload = datum["payload"]
    # PostgreSQL text cannot hold NUL, which some (invalid) events carry: drop it, so the
    # floor stores every event it decodes without checking anything.
    return (
        _text(datum["event_id"]),
        _text(datum["subject_pin"]),
        datum["event_type"],
        datum["source_registry"],
        datum["occurred_at"],
        datum["recorded_at"],
        json.dumps(payload[1] if isinstance(payload, tuple) else payload, default=str).replace(
            "\\u0000", ""
        ),
    )


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "") if value else value
