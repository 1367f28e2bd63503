"""PostgreSQL: the synchronizer's state and the central population store.

Every write here is idempotent, so a batch re-delivered after a crash changes
nothing the first delivery already wrote:
- history rows are keyed by (pin, version) and inserted with DO NOTHING;
- a citizen row only moves forward (`WHERE citizens.version < excluded.version`);
- synchronizer state only moves forward the same way;
- the store writer records, in the same transaction as the rows, the next offset
  of every partition it consumed (`store_writer_offsets`), and skips what is
  below it: a re-delivery after a crash, or a batch of a writer that lost its
  partitions (the row lock serializes two writers of one partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from popsync.contract import models as m
from popsync.settings import PostgresSettings

log = logging.getLogger(__name__)


def schema_sql() -> str:
    return resources.files("popsync.adapters").joinpath("sql/schema.sql").read_text("utf-8")


class Database:
    """One lazily (re)opened async connection, used by one transaction at a time.

    A worker may run several agents (the store writer reads two topics); the lock
    keeps them from interleaving commands on the shared connection. After any
    failure the connection is dropped, so the retry starts on a clean one.
    """

    def __init__(self, settings: PostgresSettings) -> None:
        self._settings = settings
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self._settings.dsn.get_secret_value(),
                connect_timeout=int(self._settings.connect_timeout_seconds),
            )
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction(), conn.cursor() as cursor:
                    yield cursor
            except BaseException:
                await self._discard()
                raise

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                await conn.close()

    async def migrate(self) -> None:
        async with self.transaction() as cur:
            await cur.execute(schema_sql().encode())

    async def close(self) -> None:
        await self._discard()


class SyncStateStore:
    """Each citizen's accepted events, as the synchronizer persists them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self, pins: Iterable[str]) -> dict[str, list[bytes]]:
        async with self._db.transaction() as cur:
            await cur.execute(
                "SELECT pin, events FROM sync_citizen_state WHERE pin = ANY(%s)", (list(pins),)
            )
            return {pin: list(events) for pin, events in await cur.fetchall()}

    async def save(self, states: Mapping[str, tuple[int, Sequence[bytes]]]) -> None:
        if not states:
            return
        async with self._db.transaction() as cur:
            await cur.executemany(
                """
                INSERT INTO sync_citizen_state (pin, version, events) VALUES (%s, %s, %s)
                ON CONFLICT (pin) DO UPDATE
                   SET version = excluded.version, events = excluded.events, updated_at = now()
                 WHERE sync_citizen_state.version < excluded.version
                """,
                [(pin, version, list(events)) for pin, (version, events) in states.items()],
            )


_CITIZEN_COLUMNS = (
    "pin",
    "version",
    "full_name",
    "birth_date",
    "sex",
    "ethnicity",
    "nationality",
    "birthplace_province",
    "marital_status",
    "spouse_pin",
    "life_status",
    "death_date",
    "permanent_province",
    "permanent_commune",
    "temporary_province",
    "temporary_commune",
    "id_card_number",
    "snapshot",
    "last_event_id",
    "last_event_at",
)
_UPSERT_CITIZEN = f"""
    INSERT INTO citizens ({", ".join(_CITIZEN_COLUMNS)})
    VALUES ({", ".join(["%s"] * len(_CITIZEN_COLUMNS))})
    ON CONFLICT (pin) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in _CITIZEN_COLUMNS[1:])}, updated_at = now()
    WHERE citizens.version < excluded.version
"""  # noqa: S608 - column names are constants above, values are parameters
_INSERT_HISTORY = """
    INSERT INTO citizen_history (pin, version, event_id, event_type, source_registry,
                                 changed_fields, changes, occurred_at, applied_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (pin, version) DO NOTHING
"""
# The newest record of an event's conflict wins; a re-delivered older one changes nothing
# (records of one batch share a time and are written in order, hence <=).
_UPSERT_CONFLICT = """
    INSERT INTO citizen_conflicts (pin, event_id, event_type, source_registry, conflict_code,
                                   message, occurred_at, detected_at, resolved_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (pin, event_id) DO UPDATE SET
        conflict_code = excluded.conflict_code, message = excluded.message,
        detected_at = excluded.detected_at, resolved_at = excluded.resolved_at
    WHERE citizen_conflicts.detected_at <= excluded.detected_at
"""


def _citizen_row(update: m.CitizenUpdate) -> tuple[Any, ...]:
    s = update.snapshot
    permanent, temporary = s.permanent_residence, s.temporary_residence
    return (
        s.pin,
        update.version,
        s.full_name,
        s.birth_date,
        s.sex,
        s.ethnicity,
        s.nationality,
        s.birthplace_province,
        s.marital_status,
        s.spouse_pin,
        s.life_status,
        s.death_date,
        permanent and permanent.province_code,
        permanent and permanent.commune_code,
        temporary and temporary.province_code,
        temporary and temporary.commune_code,
        s.id_card and s.id_card.card_number,
        Jsonb(s.model_dump(mode="json")),
        update.event_id,
        update.occurred_at,
    )


def _history_row(update: m.CitizenUpdate) -> tuple[Any, ...]:
    snapshot = update.snapshot.model_dump(mode="json")
    changes = {name: snapshot[name] for name in update.changed_fields}
    return (
        update.pin,
        update.version,
        update.event_id,
        update.event_type,
        update.source_registry,
        list(update.changed_fields),
        Jsonb(changes),
        update.occurred_at,
        update.applied_at,
    )


def _conflict_row(conflict: m.MergeConflict) -> tuple[Any, ...]:
    return (
        conflict.pin,
        conflict.event_id,
        conflict.event_type,
        conflict.source_registry,
        conflict.conflict_code,
        conflict.message,
        conflict.occurred_at,
        conflict.detected_at,
        conflict.detected_at if conflict.resolved else None,
    )


@dataclass(frozen=True)
class Consumed:
    """A decoded record and where it was read, for the offsets kept with the rows."""

    topic: str
    partition: int
    offset: int
    record: m.CitizenUpdate | m.MergeConflict | None  # None: dead-lettered, nothing to write


@dataclass(frozen=True)
class WriteResult:
    written: int
    skipped: int  # already applied by an earlier delivery
    records: tuple[m.CitizenUpdate | m.MergeConflict, ...] = field(default=(), compare=False)


_CLAIM_PARTITIONS = """
    INSERT INTO store_writer_offsets (group_id, topic, partition, next_offset)
    SELECT %s, %s, p, 0 FROM unnest(%s::int[]) AS p
    ON CONFLICT DO NOTHING
"""
_LOCK_OFFSETS = """
    SELECT partition, next_offset FROM store_writer_offsets
     WHERE group_id = %s AND topic = %s AND partition = ANY(%s)
     ORDER BY partition
       FOR UPDATE
"""
_ADVANCE_OFFSET = """
    UPDATE store_writer_offsets SET next_offset = %s, updated_at = now()
     WHERE group_id = %s AND topic = %s AND partition = %s AND next_offset < %s
"""


class CitizenStore:
    """The central population store's tables."""

    def __init__(self, db: Database, group_id: str) -> None:
        self._db = db
        self._group_id = group_id

    async def write(self, batch: Sequence[Consumed]) -> WriteResult:
        """Write one batch in one transaction, with its consumed offsets.

        History, current rows and conflicts are written for the records at or past
        their partition's stored next offset; the offsets then move past the batch.
        """
        fresh: list[Consumed] = []
        async with self._db.transaction() as cur:
            for topic in sorted({c.topic for c in batch}):
                of_topic = [c for c in batch if c.topic == topic]
                fresh += await self._claim(cur, topic, of_topic)
            records = tuple(c.record for c in fresh if c.record is not None)
            await self._write_rows(cur, records)
        return WriteResult(written=len(fresh), skipped=len(batch) - len(fresh), records=records)

    async def _claim(
        self, cur: psycopg.AsyncCursor[Any], topic: str, batch: Sequence[Consumed]
    ) -> list[Consumed]:
        """Lock the topic's partitions of the batch, move their offsets past it; the unseen part."""
        partitions = sorted({c.partition for c in batch})
        await cur.execute(_CLAIM_PARTITIONS, (self._group_id, topic, partitions))
        await cur.execute(_LOCK_OFFSETS, (self._group_id, topic, partitions))
        next_offsets: dict[int, int] = dict(await cur.fetchall())
        ends: dict[int, int] = {}
        for c in batch:
            ends[c.partition] = max(ends.get(c.partition, 0), c.offset + 1)
        await cur.executemany(
            _ADVANCE_OFFSET,
            [(end, self._group_id, topic, p, end) for p, end in sorted(ends.items())],
        )
        return [c for c in batch if c.offset >= next_offsets[c.partition]]

    async def _write_rows(
        self, cur: psycopg.AsyncCursor[Any], records: Sequence[m.CitizenUpdate | m.MergeConflict]
    ) -> None:
        updates = [r for r in records if isinstance(r, m.CitizenUpdate)]
        conflicts = [r for r in records if isinstance(r, m.MergeConflict)]
        latest: dict[str, m.CitizenUpdate] = {}
        for update in updates:
            if update.pin not in latest or latest[update.pin].version < update.version:
                latest[update.pin] = update
        if updates:
            await cur.executemany(_INSERT_HISTORY, [_history_row(u) for u in updates])
            await cur.executemany(_UPSERT_CITIZEN, [_citizen_row(u) for u in latest.values()])
        if conflicts:
            await cur.executemany(_UPSERT_CONFLICT, [_conflict_row(c) for c in conflicts])
