"""The naive baseline: a straightforward faust agent, one event at a time.

For each message: decode it (fastavro, then the pydantic contract model, which validates
it), and upsert one row, the citizen's latest event, in its own transaction. No batching,
no merge rules, no history. It is what a first version of the synchronizer would look like.

Run by the harness as ``python -m bench.pipeline.naive`` with BENCH_* variables.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import faust
import psycopg
from psycopg.types.json import Jsonb

from bench.pipeline.dataset import EVENT_CODEC
from popsync.contract.codec import DecodeError

TABLE = """
CREATE TABLE IF NOT EXISTS naive_citizens (
    pin               text PRIMARY KEY,
    event_id          text NOT NULL,
    event_type        text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    first_written_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    written_at        timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
UPSERT = """
INSERT INTO naive_citizens (pin, event_id, event_type, occurred_at, payload)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (pin) DO UPDATE SET event_id = excluded.event_id,
    event_type = excluded.event_type, occurred_at = excluded.occurred_at,
    payload = excluded.payload, written_at = clock_timestamp()
"""
GROUP = "bench-naive"


def build() -> faust.App:
    app = faust.App(
        GROUP,
        broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
        broker_session_timeout=6,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",
        datadir=os.environ.get("BENCH_DATADIR", "naive-data"),
    )
    topic = app.topic(
        os.environ["BENCH_TOPIC"],
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    dsn = os.environ["BENCH_DSN"]

    @app.agent(topic)
    async def upsert(stream: Any) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute(TABLE)
        async for value in stream:
            try:
                event = EVENT_CODEC.decode(value)
            except DecodeError:
                continue
            await conn.execute(
                UPSERT,
                (
                    event.subject_pin or event.event_id,
                    event.event_id,
                    event.event_type.value,
                    event.occurred_at,
                    Jsonb(event.payload.model_dump(mode="json")),
                ),
            )

    return app


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--without-web", "-l", "warn"]
    build().main()
