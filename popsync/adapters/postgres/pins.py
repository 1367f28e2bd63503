"""Identity in the central store: PIN allocation, and the aliases of citizens.

PIN allocation is backed by the central store, so serials are unique across workers.

Per prefix (province, gender/century digit, birth year) one row counts the serials
handed out; reserving a range is one atomic `UPDATE … RETURNING`, so concurrent
validators never get the same serial. `pin_allocations` remembers the PIN of each
birth event: a re-delivered or replayed birth gets the PIN it got the first time,
and when two workers race on one event, the first insert wins and both use it.

A serial is skipped when its PIN is already known to the synchronizer (a PIN a
registry sent itself). A registry PIN that first arrives *after* popsync gave the
same PIN away is not silently merged: the second birth for that PIN is surfaced as
a `BIRTH_ALREADY_REGISTERED` conflict.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from popsync.adapters.postgres.database import Database
from popsync.domain.aliases import Alias
from popsync.domain.allocation import AllocationRequest, pin_for

_KNOWN = "SELECT event_id, pin FROM pin_allocations WHERE event_id = ANY(%s)"
_RESERVE = """
    INSERT INTO pin_serials (prefix, allocated) VALUES (%s, %s)
    ON CONFLICT (prefix) DO UPDATE SET allocated = pin_serials.allocated + excluded.allocated
    RETURNING allocated
"""
_TAKEN = """
    SELECT pin FROM sync_citizen_state WHERE pin = ANY(%(pins)s)
    UNION SELECT pin FROM pin_allocations WHERE pin = ANY(%(pins)s)
"""
_RECORD = """
    INSERT INTO pin_allocations (event_id, pin) VALUES (%s, %s)
    ON CONFLICT (event_id) DO NOTHING
"""


class PostgresPinAllocator:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def allocate(self, requests: Sequence[AllocationRequest]) -> Mapping[str, str]:
        """One transaction for a batch of births; idempotent per event id."""
        if not requests:
            return {}
        event_ids = sorted({r.event_id for r in requests})
        async with self._db.transaction() as cur:
            await cur.execute(_KNOWN, (event_ids,))
            pins: dict[str, str] = dict(await cur.fetchall())
            new: dict[str, list[str]] = defaultdict(list)
            for r in requests:
                if r.event_id not in pins and r.event_id not in new[r.prefix]:
                    new[r.prefix].append(r.event_id)
            for prefix, events in sorted(new.items()):
                fresh = await self._fresh_pins(cur, prefix, len(events))
                await cur.executemany(_RECORD, list(zip(events, fresh, strict=True)))
            await cur.execute(_KNOWN, (event_ids,))  # a racing worker's insert wins
            return dict(await cur.fetchall())

    async def _fresh_pins(
        self, cur: psycopg.AsyncCursor[Any], prefix: str, count: int
    ) -> list[str]:
        """`count` PINs of `prefix` that nobody holds, from serials reserved for us."""
        fresh: list[str] = []
        while len(fresh) < count:
            wanted = count - len(fresh)
            await cur.execute(_RESERVE, (prefix, wanted))
            (last,) = await cur.fetchone() or (0,)
            candidates = [pin_for(prefix, s) for s in range(last - wanted + 1, last + 1)]
            await cur.execute(_TAKEN, {"pins": candidates})
            taken = {pin for (pin,) in await cur.fetchall()}
            fresh += [pin for pin in candidates if pin not in taken]
        return fresh


class PostgresAliasDirectory:
    """`citizen_aliases`: one row per alias; the first citizen to declare it keeps it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def resolve(self, identifiers: Sequence[str]) -> Mapping[str, str]:
        if not identifiers:
            return {}
        async with self._db.transaction() as cur:
            await cur.execute(
                "SELECT alias, pin FROM citizen_aliases WHERE alias = ANY(%s)",
                (sorted(set(identifiers)),),
            )
            return dict(await cur.fetchall())

    async def register(self, aliases: Sequence[Alias]) -> Mapping[str, str]:
        if not aliases:
            return {}
        async with self._db.transaction() as cur:
            await cur.executemany(
                "INSERT INTO citizen_aliases (alias, pin, kind, event_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (alias) DO NOTHING",
                [(a.alias, a.pin, a.kind, a.event_id) for a in aliases],
            )
            await cur.execute(
                "SELECT alias, pin FROM citizen_aliases WHERE alias = ANY(%s)",
                (sorted({a.alias for a in aliases}),),
            )
            return dict(await cur.fetchall())
