"""PostgreSQL: a backfill run's staging table, its parts' cursors and counts.

A run stages every record of its archives into an UNLOGGED table of its own with COPY,
then applies them in one ordered pass per citizen (`APPLY_ORDER`), read back in chunks by
keyset. Each part's cursor, counts and dead-letter file length are written by
`commit_part` in the caller's transaction, the one that writes the rows they account for.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.sync_state import hold_merge_fence, release_merge_fence

# Before any real record in apply order (every cursor starts here).
_FIRST = datetime(1, 1, 1, tzinfo=UTC)
APPLY_ORDER = ("key", "occurred_at", "recorded_at", "file_no", "position")
BUCKETS = 4096
_STAGED_TYPES = {
    "file_no": "int4",
    "position": "int8",
    "key": "text",
    "bucket": "int2",
    "occurred_at": "timestamptz",
    "recorded_at": "timestamptz",
    "value": "bytea",
    "refused": "text",
    "why": "text",
    "reference": "text",
}


class StagedRecord(NamedTuple):  # a tuple: made by the million, cheaply
    """One record of an archive as staged: its subject key ('' when none), its times (the
    apply order), its bytes; `refused`/`why` for a line that is no event at all."""

    position: int  # its place in the file: record index (container), line number (JSONL)
    key: str
    occurred_at: datetime
    recorded_at: datetime
    value: bytes | None
    refused: str | None = None
    why: str | None = None
    reference: str | None = None  # without a PIN: the old identifier naming the subject

    @property
    def message_key(self) -> bytes | None:
        """The key a registry gives the record's message: how it names the subject."""
        named = self.key or self.reference
        return named.encode() if named else None


class StagedRow(NamedTuple):
    file_no: int
    record: StagedRecord

    @property
    def order(self) -> Cursor:
        r = self.record
        return Cursor(r.key, r.occurred_at, r.recorded_at, self.file_no, r.position)


class Cursor(NamedTuple):
    """A place in apply order: the last record a part applied."""

    key: str = ""
    occurred_at: datetime = _FIRST
    recorded_at: datetime = _FIRST
    file_no: int = -1
    position: int = -1

    def as_tuple(self) -> tuple[str, datetime, datetime, int, int]:
        return (self.key, self.occurred_at, self.recorded_at, self.file_no, self.position)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    staged_records: int | None
    citizens: int | None
    finished: bool
    pinless: int = 0  # staged records without a subject PIN: left to the last pass


@dataclass(frozen=True)
class PartRecord:
    """One part of a run: parts 0..parts-1 share the staged citizens by bucket; part
    `parts` is the last pass, over the records deferred to it."""

    part: int
    parts: int
    cursor: Cursor
    counts: dict[str, int]
    dead_letter_bytes: int
    finished: bool

    @property
    def last_pass(self) -> bool:
        return self.part == self.parts

    def takes(self, key: str) -> bool:
        """Whether this part applies the citizen of `key` (the last pass: every one)."""
        return self.last_pass or bucket_of(key) % self.parts == self.part


def bucket_of(key: str) -> int:
    """The share of the citizens a subject key falls in: a part applies the keys whose
    bucket is its number modulo the run's parts (the same function for a staged key and
    for the PIN the validator resolves it to)."""
    return zlib.crc32(key.encode()) % BUCKETS


def staging_name(run_id: str, deferred: bool = False) -> str:
    """The run's own staging table (the run id is hex: a plain identifier); `deferred`:
    its records left to the last pass (`defer`)."""
    return f"backfill_{'defer' if deferred else 'stage'}_{run_id[:24]}"


def staging_table(run_id: str, deferred: bool = False) -> sql.Identifier:
    return sql.Identifier(staging_name(run_id, deferred))


def _create(table: sql.Identifier) -> sql.Composed:
    return sql.SQL(
        "CREATE UNLOGGED TABLE {} (file_no int NOT NULL, position bigint NOT NULL, "
        "key text NOT NULL, bucket smallint NOT NULL, occurred_at timestamptz NOT NULL, "
        "recorded_at timestamptz NOT NULL, value bytea, refused text, why text, reference text)"
    ).format(table)


def _index(run_id: str, deferred: bool) -> sql.Composed:
    order = sql.SQL(", ").join(map(sql.Identifier, APPLY_ORDER))
    index = sql.Identifier(f"{staging_name(run_id, deferred)}_order")
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        index, staging_table(run_id, deferred), order
    )


def _drop_staging(run_id: str) -> list[sql.Composed]:
    drop = sql.SQL("DROP TABLE IF EXISTS {}")
    return [drop.format(staging_table(run_id, deferred)) for deferred in (False, True)]


class BackfillBusy(RuntimeError):
    """Another backfill of the same archives holds the run."""


class BackfillStore:
    """A run's rows in PostgreSQL; each method is its own transaction unless it takes a
    cursor."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def open_run(self, run_id: str, files: Sequence[Mapping[str, Any]]) -> RunRecord:
        """The run of these archives, recorded now if it is new."""
        async with self._db.transaction() as cur:
            await cur.execute(
                "INSERT INTO backfill_runs (run_id, files) VALUES (%s, %s::jsonb) "
                "ON CONFLICT DO NOTHING",
                (run_id, json.dumps(list(files))),
            )
            await cur.execute(
                "SELECT staged_records, citizens, finished_at IS NOT NULL, coalesce(pinless, 0) "
                "FROM backfill_runs WHERE run_id = %s",
                (run_id,),
            )
            row = await cur.fetchone()
        if row is None:  # inserted just above, in the same transaction
            raise RuntimeError("backfill run row missing")
        return RunRecord(run_id, row[0], row[1], bool(row[2]), row[3])

    async def lock_run(self, run_id: str) -> None:
        """Hold the run for this process (a session lock, released when its connection
        ends); `BackfillBusy` if another process holds it."""
        async with self._db.transaction() as cur:
            await cur.execute(
                "SELECT pg_try_advisory_lock(hashtext('popsync-backfill'), hashtext(%s))",
                (run_id,),
            )
            held = await cur.fetchone()
        if not (held and held[0]):
            raise BackfillBusy(
                f"another `popsync backfill` of these archives is running (run {run_id[:12]}): "
                "wait for it to finish, or stop it and run this again to resume"
            )

    async def lock_part(self, run_id: str, part: int) -> PartRecord:
        """Hold one part for this process (a session lock, waited for: a process of an
        earlier attempt still applying it, orphaned, finishes first); the part as stored
        once held."""
        async with self._db.transaction() as cur:
            await cur.execute(
                "SELECT pg_advisory_lock(hashtext('popsync-backfill-part'), hashtext(%s))",
                (f"{run_id}/{part}",),
            )
            await cur.execute(_PART_COLUMNS + " AND part = %s", (run_id, part))
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"backfill part {part} missing")
        return _part(row)

    async def fence_stream(self, waiting: Callable[[], None]) -> None:
        """Hold the merge fence exclusively (`popsync.adapters.postgres.sync_state`): the
        stream's synchronizer merges nothing until `unfence_stream`, or this session ends.
        Waits for the batches in flight, calling `waiting` once if it has to."""
        told = False
        while True:
            async with self._db.transaction() as cur:
                if await hold_merge_fence(cur):
                    return
            if not told:
                waiting()
                told = True
            await asyncio.sleep(0.5)

    async def unfence_stream(self) -> None:
        async with self._db.transaction() as cur:
            await release_merge_fence(cur)

    async def restart_run(self, run_id: str) -> None:
        """Forget a run (its staging, parts and counts), so the archives load anew."""
        async with self._db.transaction() as cur:
            for drop in _drop_staging(run_id):
                await cur.execute(drop)
            await cur.execute("DELETE FROM backfill_runs WHERE run_id = %s", (run_id,))

    async def staging_intact(self, run: RunRecord) -> bool:
        """Whether the run's staging still holds what it staged (an UNLOGGED table is
        emptied by a crash of the server)."""
        if run.staged_records is None:
            return False
        async with self._db.transaction() as cur:
            await cur.execute("SELECT to_regclass(%s)", (staging_name(run.run_id),))
            found = await cur.fetchone()
            if found is None or found[0] is None:
                return False
            query = sql.SQL("SELECT count(*) FROM {}").format(staging_table(run.run_id))
            await cur.execute(query)
            counted = await cur.fetchone()
        # The staging table is never changed once staged; a crash of the server empties it.
        return counted is not None and counted[0] == run.staged_records - run.pinless

    async def begin_staging(self, run_id: str) -> None:
        """An empty staging table for the run (any earlier attempt's rows dropped)."""
        async with self._db.transaction() as cur:
            for drop in _drop_staging(run_id):
                await cur.execute(drop)
            for deferred in (False, True):
                await cur.execute(_create(staging_table(run_id, deferred)))
            await cur.execute(_index(run_id, deferred=True))
            await cur.execute("DELETE FROM backfill_parts WHERE run_id = %s", (run_id,))

    async def stage(self, run_id: str, file_no: int, records: Iterable[StagedRecord]) -> int:
        """COPY one archive's records into the run's staging, in one transaction; the count."""
        count = 0
        query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            staging_table(run_id), sql.SQL(", ").join(map(sql.Identifier, _STAGED_TYPES))
        )
        async with self._db.transaction() as cur, cur.copy(query) as copy:
            copy.set_types(list(_STAGED_TYPES.values()))
            for r in records:
                row = (file_no, r.position, r.key, bucket_of(r.key), r.occurred_at)
                await copy.write_row((*row, r.recorded_at, r.value, r.refused, r.why, r.reference))
                count += 1
        return count

    async def finish_staging(self, run_id: str) -> RunRecord:
        """Move the records without a subject PIN to the last pass (a part cannot tell whose
        they are before the validator resolves them, and the aliases they may name are
        declared by events keyed by PIN: those come first), index the staging in apply
        order and record what it holds."""
        table = staging_table(run_id)
        async with self._db.transaction() as cur:
            await cur.execute(
                sql.SQL(
                    "WITH moved AS (DELETE FROM {} WHERE key = '' RETURNING *) "
                    "INSERT INTO {} SELECT * FROM moved"
                ).format(table, staging_table(run_id, deferred=True))
            )
            pinless = cur.rowcount
            await cur.execute(_index(run_id, deferred=False))
            await cur.execute(sql.SQL("ANALYZE {}").format(table))
            await cur.execute(sql.SQL("SELECT count(*), count(DISTINCT key) FROM {}").format(table))
            counted = await cur.fetchone()
            if counted is None:  # an aggregate always has its row
                raise RuntimeError("count returned no row")
            staged = counted[0] + pinless
            await cur.execute(
                "UPDATE backfill_runs SET staged_records = %s, pinless = %s, citizens = %s "
                "WHERE run_id = %s",
                (staged, pinless, counted[1], run_id),
            )
        return RunRecord(run_id, staged, counted[1], False, pinless)

    async def parts(self, run_id: str, parts: int) -> list[PartRecord]:
        """The run's parts, made now if the run has none (a run keeps its number of parts)."""
        async with self._db.transaction() as cur:
            await cur.execute(
                "INSERT INTO backfill_parts (run_id, part, parts) "
                "SELECT %s, p, %s FROM generate_series(0, %s) AS p "
                "WHERE NOT EXISTS (SELECT 1 FROM backfill_parts WHERE run_id = %s)",
                (run_id, parts, parts, run_id),
            )
            await cur.execute(_PART_COLUMNS + " ORDER BY part", (run_id,))
            rows = await cur.fetchall()
        return [_part(row) for row in rows]

    async def next_rows(
        self, run_id: str, part: PartRecord, after: Cursor, limit: int
    ) -> list[StagedRow]:
        """The part's next `limit` records in apply order after `after`."""
        columns = sql.SQL(", ").join(map(sql.Identifier, _STAGED_TYPES))
        order = sql.SQL(", ").join(map(sql.Identifier, APPLY_ORDER))
        share: sql.Composable = sql.SQL("")
        if part.parts > 1 and not part.last_pass:
            share = sql.SQL(" AND bucket %% {} = {}").format(
                sql.Literal(part.parts), sql.Literal(part.part)
            )
        query = sql.SQL(
            "SELECT {columns} FROM {table} WHERE ({order}) > (%s, %s, %s, %s, %s){share} "
            "ORDER BY {order} LIMIT %s"
        ).format(
            columns=columns,
            table=staging_table(run_id, deferred=part.last_pass),
            order=order,
            share=share,
        )
        async with self._db.transaction() as cur:
            await cur.execute(query, (*after.as_tuple(), limit))
            rows = await cur.fetchall()
        return [
            StagedRow(r[0], StagedRecord(r[1], r[2], r[4], r[5], r[6], r[7], r[8], r[9]))
            for r in rows
        ]

    async def finish_run(self, run_id: str) -> None:
        """Mark the run done and drop its staging."""
        async with self._db.transaction() as cur:
            for drop in _drop_staging(run_id):
                await cur.execute(drop)
            await cur.execute(
                "UPDATE backfill_runs SET finished_at = now() WHERE run_id = %s", (run_id,)
            )


async def defer(
    cur: psycopg.AsyncCursor[Any], run_id: str, rows: Sequence[tuple[str, StagedRow]]
) -> None:
    """Leave records to the run's last pass, each under the PIN it was resolved to (a part
    merges only its own citizens), in the caller's transaction."""
    if not rows:
        return
    query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        staging_table(run_id, deferred=True),
        sql.SQL(", ").join(map(sql.Identifier, _STAGED_TYPES)),
    )
    async with cur.copy(query) as copy:
        copy.set_types(list(_STAGED_TYPES.values()))
        for pin, row in rows:
            r = row.record
            staged = (row.file_no, r.position, pin, bucket_of(pin), r.occurred_at)
            await copy.write_row((*staged, r.recorded_at, r.value, r.refused, r.why, r.reference))


async def commit_part(
    cur: psycopg.AsyncCursor[Any],
    run_id: str,
    part: int,
    cursor: Cursor,
    counts: Mapping[str, int],
    dead_letter_bytes: int,
    *,
    finished: bool = False,
) -> None:
    """Move a part's cursor, counts and dead-letter length, in the caller's transaction."""
    await cur.execute(
        "UPDATE backfill_parts SET cursor_key = %s, cursor_occurred = %s, "
        "cursor_recorded = %s, cursor_file = %s, cursor_position = %s, counts = %s::jsonb, "
        "dead_letter_bytes = %s, finished_at = CASE WHEN %s THEN now() END "
        "WHERE run_id = %s AND part = %s",
        (*cursor.as_tuple(), json.dumps(dict(counts)), dead_letter_bytes, finished, run_id, part),
    )


_PART_COLUMNS = (
    "SELECT part, parts, cursor_key, cursor_occurred, cursor_recorded, cursor_file, "
    "cursor_position, counts, dead_letter_bytes, finished_at IS NOT NULL "
    "FROM backfill_parts WHERE run_id = %s"
)


def _part(row: Sequence[Any]) -> PartRecord:
    cursor = Cursor() if row[2] is None else Cursor(row[2], row[3], row[4], row[5], row[6])
    counts = {str(k): int(v) for k, v in (row[7] or {}).items()}
    return PartRecord(row[0], row[1], cursor, counts, row[8], bool(row[9]))
