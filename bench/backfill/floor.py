"""The floor: what the hardware does with the same archives and no validation, no merge.

fastavro reads each container file, each record becomes a plain row (a few columns and the
payload as jsonb, the table of bench/pipeline's floor), and every `batch` rows go into
PostgreSQL with one COPY and one commit, in one process. Nothing the backfill adds
(signature check, pydantic models, rules, identity, merge, history) is done, so the
backfill can only be slower; the ratio says by how much.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

from bench.backfill.archive import read_datums

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
BATCH = 50_000
MIN_BATCHES = 20  # a short run still has this many commits to time


def batch_size(events: int) -> int:
    """Rows per COPY: `BATCH`, or less for a short archive, so the rate is taken over at
    least `MIN_BATCHES` commits."""
    return max(1_000, min(BATCH, events // MIN_BATCHES))


def run(dsn: str, files: Iterable[Path], batch: int) -> dict[str, Any]:
    """Read, decode and COPY every record of `files`; the rate from the first commit to the
    last, over the rows written after the first (so no start-up time counts)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(TABLE)
        conn.commit()
    events = first_rows = 0
    first_commit = last_commit = 0.0
    cpu_before = _own_cpu_seconds()
    started = time.time()
    with psycopg.connect(dsn) as conn:
        rows: list[tuple[Any, ...]] = []
        for path in files:
            for datum in read_datums(path):
                rows.append(_row(datum))
                if len(rows) == batch:
                    _copy(conn, rows)
                    events += len(rows)
                    rows.clear()
                    last_commit = time.time()
                    if not first_commit:
                        first_commit, first_rows = last_commit, events
        if rows:
            _copy(conn, rows)
            events += len(rows)
            last_commit = time.time()
            if not first_commit:
                first_commit, first_rows = last_commit, events
    timed = events - first_rows
    seconds = max(last_commit - first_commit, 1e-3)
    return {
        "events": events,
        "batch": batch,
        "started": started,
        "first_write": first_commit,
        "last_write": last_commit,
        "timed_events": timed,
        "seconds": round(seconds, 2),
        "wall_seconds": round(last_commit - started, 2),
        "events_per_second": round(timed / seconds, 1) if timed else None,
        "cpu_seconds": round(_own_cpu_seconds() - cpu_before, 2),
    }


def drop(dsn: str) -> None:
    """Remove the floor's rows and flush PostgreSQL's dirty pages, so the backfill after it
    does not pay for writing them out."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor_events")
        conn.execute("CHECKPOINT")


def _copy(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY floor_events ({COLUMNS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    conn.commit()


def _row(datum: dict[str, Any]) -> tuple[Any, ...]:
    payload = datum["payload"]
    # PostgreSQL text cannot hold NUL, which some (invalid) events carry: drop it, so the
    # floor stores every record without checking anything.
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


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
