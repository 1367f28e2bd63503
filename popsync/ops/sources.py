"""`popsync sources list` and `popsync sources release`: quarantined publishing sources.

A source (a publisher, e.g. `civil-status-79`) that crosses the dead-letter limit is
quarantined by the workers (`popsync.runtime.quarantine`): its events are parked whole as
SOURCE_QUARANTINED. Once the registry has fixed its feed, an operator releases it; the
workers let its events through again at once, and the events
parked meanwhile are sent back with `popsync dlq replay --reason SOURCE_QUARANTINED
--source ID` (they are checked like any event: the bad ones are parked again, for their
own reason).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from popsync.adapters.postgres.database import connect
from popsync.adapters.postgres.quarantine import QuarantineRow, list_quarantines, release
from popsync.ops.review import operator_name
from popsync.settings import Settings


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(row: QuarantineRow) -> str:
    """One line per quarantine; counts and codes only."""
    if row.released_at is None:
        state = "IN FORCE"
    else:
        state = f"released {_when(row.released_at)} by {row.released_by}"
    return (
        f"{row.source}  {state}  since {_when(row.quarantined_at)}  by {row.stage}  "
        f"{row.reason}: {row.detail}"
    )


def list_sources(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Print every quarantine, those in force first; exit code 0."""
    with connect(settings.postgres) as conn:
        rows = list_quarantines(conn)
    in_force = sum(1 for row in rows if row.released_at is None)
    print(f"{in_force} source(s) quarantined, {len(rows) - in_force} released", file=out)
    for row in rows:
        print(describe(row), file=out)
    return 0


def release_source(settings: Settings, source: str, operator: str | None, out: TextIO) -> int:
    """Lift the quarantine of `source`; exit code 0, or 1 when none is in force.

    Takes effect at once: a worker reads what is in force again before it parks anything as
    quarantined, so a replay started right after this is not parked again.
    """
    who = operator_name(operator)
    with connect(settings.postgres) as conn, conn.transaction():
        released = release(conn, source, who)
    if not released:
        print(f"no quarantine in force for {source!r} (see `popsync sources list`)", file=out)
        return 1
    print(
        f"released {source}; replay what was parked meanwhile: "
        f"popsync dlq replay --reason SOURCE_QUARANTINED --source {source}",
        file=out,
    )
    return 0
