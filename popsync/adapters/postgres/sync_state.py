"""PostgreSQL: the synchronizer's state, each citizen's accepted events and their fold.

A state only moves forward in version (`WHERE version < excluded.version`), so saving a
batch again after a crash changes nothing the first save wrote. The citizen's count of
events applied on one day (the synchronizer's daily cap) is saved with its version: it
only changes when an event is applied, so a retried batch counts nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

from popsync.adapters.postgres.database import Database, copy_rows


@dataclass(frozen=True)
class StoredState:
    """A citizen's persisted synchronizer state; `events` is None when the caller's copy of
    this version is current (see `SyncStateStore.load`). `event_ids` (one per event) and
    `fold` (what the events fold to) are None in rows written before they were kept.
    `applied_today` events were applied on `day` (UTC, by arrival); sent back with the
    events (the caller's copy of the version has them), None and 0 in older rows."""

    version: int
    events: list[bytes] | None
    event_ids: list[str] | None = None
    fold: bytes | None = None
    day: date | None = None
    applied_today: int = 0


class SyncStateStore:
    """Each citizen's accepted events, as the synchronizer persists them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self, known: Mapping[str, int | None]) -> dict[str, StoredState]:
        """The stored state of each pin of `known`, which maps a pin to the version the
        caller already holds (None: none). The events of a version the caller holds are
        not sent back, so a warm cache costs one small query per batch."""
        pins = list(known)
        versions = [-1 if known[pin] is None else known[pin] for pin in pins]
        async with self._db.transaction() as cur:
            await cur.execute(
                """
                SELECT s.pin, s.version, c.events, c.event_ids, c.fold, c.day,
                       coalesce(c.applied_today, 0)
                  FROM sync_citizen_state s
                  JOIN unnest(%s::text[], %s::bigint[]) AS k(pin, version) USING (pin)
                  -- the row's contents only where the caller's version is not it
                  LEFT JOIN LATERAL (SELECT s.events, s.event_ids, s.fold, s.day,
                                            s.applied_today
                                      WHERE s.version <> k.version) c ON true
                """,
                (pins, versions),
            )
            return {row[0]: StoredState(*row[1:]) for row in await cur.fetchall()}

    async def save(self, states: Mapping[str, StoredState]) -> None:
        """Persist each citizen's state (all of its fields set) unless the store has a
        version as new already."""
        if not states:
            return
        async with self._db.transaction() as cur:
            await save_states(cur, states)


async def save_states(cur: psycopg.AsyncCursor[Any], states: Mapping[str, StoredState]) -> None:
    """`SyncStateStore.save` in the caller's transaction (a backfill writes the states with
    the store's rows and its cursor, in one)."""
    if not states:
        return
    await cur.execute(_STAGE_SYNC_STATE)
    await copy_rows(
        cur,
        "stage_sync_state",
        _SYNC_STATE_COLUMNS,
        [
            (pin, s.version, s.events, s.event_ids, s.fold, s.day, s.applied_today)
            for pin, s in states.items()
        ],
    )
    await cur.execute(_UPSERT_SYNC_STATE)


# Staged columns and their types: the binary COPY needs them (see `_copy`).


_SYNC_STATE_COLUMNS = {
    "pin": "text",
    "version": "int8",
    "events": "bytea[]",
    "event_ids": "text[]",
    "fold": "bytea",
    "day": "date",
    "applied_today": "int4",
}
# Staged, then moved with one INSERT … SELECT (see popsync.adapters.postgres.citizens).
_STAGE_SYNC_STATE = """
    CREATE TEMP TABLE IF NOT EXISTS stage_sync_state (LIKE sync_citizen_state INCLUDING DEFAULTS)
        ON COMMIT DELETE ROWS
"""
_UPSERT_SYNC_STATE = """
    INSERT INTO sync_citizen_state (pin, version, events, event_ids, fold, day, applied_today)
    SELECT pin, version, events, event_ids, fold, day, applied_today
      FROM pg_temp.stage_sync_state ORDER BY pin
    ON CONFLICT (pin) DO UPDATE
       SET version = excluded.version, events = excluded.events,
           event_ids = excluded.event_ids, fold = excluded.fold, day = excluded.day,
           applied_today = excluded.applied_today, updated_at = now()
     WHERE sync_citizen_state.version < excluded.version
"""
