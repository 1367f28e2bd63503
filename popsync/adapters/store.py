"""PostgreSQL: the synchronizer's state and the central population store.

Every write here is idempotent, so a batch re-delivered after a crash changes
nothing the first delivery already wrote:
- history rows are keyed by (pin, version) and inserted with DO NOTHING;
- a citizen row only moves forward (`WHERE citizens.version < excluded.version`);
- synchronizer state only moves forward the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
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


class CitizenStore:
    """The central population store's tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(
        self, updates: Sequence[m.CitizenUpdate], conflicts: Sequence[m.MergeConflict]
    ) -> None:
        """Write one batch in one transaction: history, current rows, conflicts."""
        latest: dict[str, m.CitizenUpdate] = {}
        for update in updates:
            if update.pin not in latest or latest[update.pin].version < update.version:
                latest[update.pin] = update
        async with self._db.transaction() as cur:
            if updates:
                await cur.executemany(_INSERT_HISTORY, [_history_row(u) for u in updates])
                await cur.executemany(_UPSERT_CITIZEN, [_citizen_row(u) for u in latest.values()])
            if conflicts:
                await cur.executemany(_UPSERT_CONFLICT, [_conflict_row(c) for c in conflicts])
