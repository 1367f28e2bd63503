"""The floor: what the hardware does with the same archives and no validation, no merge.

fastavro reads each container file, each record becomes a plain row (a few columns and the
payload as jsonb, the table of bench/pipeline's floor), and every `batch` rows go into
PostgreSQL with one COPY and one commit, in one process. Nothing the backfill adds
(signature check, pydantic models, rules, identity, merge, history) is done, so the
backfill can only be slower; the ratio says by how much.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

from bench.backfill.archive import read_datums
from bench.pipeline.floor import COLUMNS, TABLE, row_of

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
                rows.append(row_of(datum))
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


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
