"""PostgreSQL: the quarantined publishing sources (table `source_quarantine`).

Workers read what is in force and add their decisions (`PostgresQuarantine`, async);
operators list and release (`list_quarantines`, `release`, sync, for the CLI). A source
quarantined again after a release gets its row back in force with the new decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from popsync.adapters.postgres.database import Database
from popsync.runtime.quarantine import Quarantine

_ACTIVE = "SELECT source FROM source_quarantine WHERE released_at IS NULL"
# In force already: keep the first decision (its time says when the trouble began).
_QUARANTINE = """
    INSERT INTO source_quarantine AS q (source, stage, reason, detail, quarantined_at)
    VALUES (%s, %s, %s, %s, now())
    ON CONFLICT (source) DO UPDATE SET
        stage = excluded.stage, reason = excluded.reason, detail = excluded.detail,
        quarantined_at = excluded.quarantined_at, released_at = NULL, released_by = NULL
    WHERE q.released_at IS NOT NULL
"""
_LIST = """
    SELECT source, stage, reason, detail, quarantined_at, released_at, released_by
    FROM source_quarantine ORDER BY released_at IS NULL DESC, quarantined_at DESC
"""
_RELEASE = """
    UPDATE source_quarantine SET released_at = now(), released_by = %s
    WHERE source = %s AND released_at IS NULL
"""


class PostgresQuarantine:
    """`popsync.runtime.quarantine.QuarantineStore` on the worker's database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def active(self) -> set[str]:
        async with self._db.transaction() as cur:
            await cur.execute(_ACTIVE)
            return {row[0] for row in await cur.fetchall()}

    async def quarantine(self, decisions: Sequence[Quarantine]) -> None:
        rows = [(d.source, d.stage, d.reason, d.detail) for d in decisions]
        async with self._db.transaction() as cur:
            await cur.executemany(_QUARANTINE, rows)


@dataclass(frozen=True)
class QuarantineRow:
    source: str
    stage: str
    reason: str
    detail: str
    quarantined_at: datetime
    released_at: datetime | None
    released_by: str | None


def list_quarantines(conn: psycopg.Connection[Any]) -> list[QuarantineRow]:
    """Every quarantine, those in force first, the most recent first."""
    return [QuarantineRow(*row) for row in conn.execute(_LIST).fetchall()]


def release(conn: psycopg.Connection[Any], source: str, operator: str) -> bool:
    """Lift the quarantine of `source`; False if none is in force."""
    return conn.execute(_RELEASE, (operator, source)).rowcount == 1
