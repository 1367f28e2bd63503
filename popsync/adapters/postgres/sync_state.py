"""PostgreSQL: the synchronizer's state, each citizen's accepted events and their fold.

A state only moves forward in version (`WHERE version < excluded.version`), so saving a
batch again after a crash changes nothing the first save wrote. The central store's rows
that the batch's merge made (`popsync.adapters.postgres.citizens`) are written in the same
transaction: the store never holds a version the state does not, nor the other way round.
The citizen's count of events applied on one day (the synchronizer's daily cap) is saved
with its version: it only changes when an event is applied, so a retried batch counts
nothing twice.

**The merge fence.** A citizen is merged by one writer at a time: in the stream, the
synchronizer instance that owns its partition; a backfill (`popsync backfill`) merges
outside the stream. The two must never merge at once: a state loaded by one and saved after
the other's would silently lose the other's events (a save only moves forward). So each
synchronizer batch holds a shared advisory lock from its load to its save;
a backfill holds it exclusively while it applies (`hold_merge_fence`). A synchronizer
that finds it held exclusively raises `BackfillRunning`, an infrastructure wait: its batch is
retried with backoff, and the stream's events wait on the topic until the backfill is done
(backfill(A) + stream(B), as tested). The backfill waits for the batches in flight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

from popsync.adapters.postgres.citizens import StoreRecord, write_rows
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


# The advisory lock of the merge fence (module doc), held shared by the synchronizer's
# batches, exclusively by a backfill applying: keys (7061, 1), pg_locks' classid and objid.
# Taken at most once per session: a batch retried after a fault loads again.
_ENTER_FENCE = """
    SELECT EXISTS (SELECT 1 FROM pg_locks
                    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                      AND mode = 'ShareLock' AND classid = 7061 AND objid = 1)
           OR pg_try_advisory_lock_shared(7061, 1)
"""
_LEAVE_FENCE = """
    SELECT pg_advisory_unlock_shared(7061, 1) FROM pg_locks
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
       AND mode = 'ShareLock' AND classid = 7061 AND objid = 1
"""
_HOLD_FENCE = "SELECT pg_try_advisory_lock(7061, 1)"
_RELEASE_FENCE = "SELECT pg_advisory_unlock(7061, 1)"


class BackfillRunning(TimeoutError):
    """A backfill is merging citizens: the synchronizer waits (a fault that passes)."""


class SyncStateStore:
    """Each citizen's accepted events, as the synchronizer persists them; `fenced`: behind
    the merge fence (module doc), as the stream's synchronizer is; a backfill, which holds
    the fence itself, is not."""

    def __init__(self, db: Database, *, fenced: bool = True) -> None:
        self._db = db
        self._fenced = fenced

    async def load(self, known: Mapping[str, int | None]) -> dict[str, StoredState]:
        """The stored state of each pin of `known`, which maps a pin to the version the
        caller already holds (None: none). The events of a version the caller holds are
        not sent back, so a warm cache costs one small query per batch."""
        pins = list(known)
        versions = [-1 if known[pin] is None else known[pin] for pin in pins]
        async with self._db.transaction() as cur:
            if self._fenced:
                await cur.execute(_ENTER_FENCE)
                entered = await cur.fetchone()
                if not (entered and entered[0]):
                    raise BackfillRunning(
                        "a backfill is merging citizens (popsync backfill): the stream's "
                        "merge waits until it has finished"
                    )
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

    async def save(
        self, states: Mapping[str, StoredState], records: Sequence[StoreRecord] = ()
    ) -> None:
        """Persist each citizen's state (all of its fields set) unless the store has a
        version as new already, and the central store's rows of the updates and conflicts
        the merge made (`write_rows`), in one transaction; then leave the merge fence (once
        committed)."""
        if states or records:
            async with self._db.transaction() as cur:
                await save_states(cur, states)
                await write_rows(cur, records)
        if self._fenced:
            async with self._db.transaction() as cur:
                await cur.execute(_LEAVE_FENCE)


async def hold_merge_fence(cur: psycopg.AsyncCursor[Any]) -> bool:
    """Try to take the merge fence exclusively for a backfill (its session keeps it until
    `release_merge_fence` or its end); False while a synchronizer batch holds it."""
    await cur.execute(_HOLD_FENCE)
    held = await cur.fetchone()
    return bool(held and held[0])


async def release_merge_fence(cur: psycopg.AsyncCursor[Any]) -> None:
    await cur.execute(_RELEASE_FENCE)


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
