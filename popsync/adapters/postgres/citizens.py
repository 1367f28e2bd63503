"""PostgreSQL: the central population store (citizens, their history and conflicts).

The synchronizer writes these rows in the transaction that saves the citizens' merged
states (`popsync.adapters.postgres.sync_state`), a backfill in the one that saves its
chunk. Every write here is idempotent as well, so rows written twice change nothing:
- history rows are keyed by (pin, version) and inserted with DO NOTHING;
- a citizen row only moves forward (`WHERE citizens.version < excluded.version`);
- a conflict's newest record wins (`detected_at`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from popsync.adapters.postgres.database import copy_rows
from popsync.contract import models as m

StoreRecord = m.CitizenUpdate | m.MergeConflict  # what the central store keeps rows of

# Staged columns and their types: the binary COPY needs them (see `copy_rows`).
CITIZEN_COLUMNS = {
    "pin": "text",
    "version": "int8",
    "full_name": "text",
    "birth_date": "date",
    "sex": "text",
    "ethnicity": "text",
    "nationality": "text",
    "birthplace_province": "text",
    "marital_status": "text",
    "spouse_pin": "text",
    "life_status": "text",
    "death_date": "date",
    "permanent_province": "text",
    "permanent_commune": "text",
    "temporary_province": "text",
    "temporary_commune": "text",
    "id_card_number": "text",
    "snapshot": "jsonb",
    "last_event_id": "text",
    "last_event_at": "timestamptz",
}
_HISTORY_COLUMNS = {  # written_at is left to the table's default
    "pin": "text",
    "version": "int8",
    "event_id": "text",
    "event_type": "text",
    "source_registry": "text",
    "changed_fields": "text[]",
    "changes": "jsonb",
    "occurred_at": "timestamptz",
    "applied_at": "timestamptz",
    "publisher_id": "text",  # who signed the applied event (popsync.trust), verified
    "key_id": "text",
}
_CONFLICT_COLUMNS = {
    "pin": "text",
    "event_id": "text",
    "event_type": "text",
    "source_registry": "text",
    "conflict_code": "text",
    "message": "text",
    "occurred_at": "timestamptz",
    "detected_at": "timestamptz",
    "resolved_at": "timestamptz",
}

# A batch is COPYed into staging tables, then moved with one INSERT … SELECT … ON CONFLICT
# per table: far cheaper than one statement per row. They are TEMP (private to the
# connection, emptied at commit) and declared in every transaction that uses them, so a new
# connection (the Database reconnects after a failure) needs no setup; when they exist this
# is a catalog lookup. They have no keys: rows are made unique per key in Python before the
# COPY (`_batch_rows`), since DO UPDATE cannot touch one row twice in a statement. Each
# INSERT … SELECT takes its rows in key order, so concurrent writers lock rows in one order.
_STAGE_ROWS = """
    CREATE TEMP TABLE IF NOT EXISTS stage_citizens (LIKE citizens INCLUDING DEFAULTS)
        ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS stage_history (LIKE citizen_history INCLUDING DEFAULTS)
        ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS stage_conflicts (LIKE citizen_conflicts INCLUDING DEFAULTS)
        ON COMMIT DELETE ROWS;
"""
_UPSERT_CITIZENS = f"""
    INSERT INTO citizens ({", ".join(CITIZEN_COLUMNS)})
    SELECT {", ".join(CITIZEN_COLUMNS)} FROM pg_temp.stage_citizens ORDER BY pin
    ON CONFLICT (pin) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in CITIZEN_COLUMNS if c != "pin")},
        updated_at = now()
    WHERE citizens.version < excluded.version
"""  # noqa: S608 - column names are constants above
_INSERT_HISTORY = f"""
    INSERT INTO citizen_history ({", ".join(_HISTORY_COLUMNS)})
    SELECT {", ".join(_HISTORY_COLUMNS)} FROM pg_temp.stage_history ORDER BY pin, version
    ON CONFLICT (pin, version) DO NOTHING
"""  # noqa: S608 - column names are constants above
# The newest record of an event's conflict wins; a re-delivered older one changes nothing
# (records of one batch share a time and come in order, hence <=; see `_batch_rows`).
_UPSERT_CONFLICTS = f"""
    INSERT INTO citizen_conflicts ({", ".join(_CONFLICT_COLUMNS)})
    SELECT {", ".join(_CONFLICT_COLUMNS)} FROM pg_temp.stage_conflicts ORDER BY pin, event_id
    ON CONFLICT (pin, event_id) DO UPDATE SET
        conflict_code = excluded.conflict_code, message = excluded.message,
        detected_at = excluded.detected_at, resolved_at = excluded.resolved_at
    WHERE citizen_conflicts.detected_at <= excluded.detected_at
"""  # noqa: S608 - column names are constants above


def _as_is(text: bytes) -> bytes:
    """The `dumps` of a Jsonb of JSON text made already."""
    return text


def _snapshot_jsonb(snapshot: m.CitizenSnapshot, include: set[str] | None = None) -> Jsonb:
    """The snapshot (or its `include` fields) as jsonb: the JSON of `model_dump(mode="json")`.

    Pydantic's Rust serializer writes the text (what `model_dump_json` does, without its
    decode: psycopg sends the bytes as they are). `model_dump(mode="json")` and psycopg's
    `json.dumps` of it were a hot spot of the store's writer.
    """
    text = snapshot.__pydantic_serializer__.to_json(snapshot, include=include)
    return Jsonb(text, dumps=_as_is)


def _citizen_row(update: m.CitizenUpdate) -> tuple[Any, ...]:
    """The citizens row."""
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
        _snapshot_jsonb(s),
        update.event_id,
        update.occurred_at,
    )


def _history_row(update: m.CitizenUpdate) -> tuple[Any, ...]:
    """The citizen_history row; its changes are the changed fields' values in the snapshot."""
    changed = update.changed_fields
    return (
        update.pin,
        update.version,
        update.event_id,
        update.event_type,
        update.source_registry,
        changed,
        _snapshot_jsonb(update.snapshot, include=set(changed)),
        update.occurred_at,
        update.applied_at,
        update.publisher_id,
        update.key_id,
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


@dataclass
class _BatchRows:
    history: list[tuple[Any, ...]]
    citizens: list[tuple[Any, ...]]
    conflicts: list[tuple[Any, ...]]


def _batch_rows(records: Sequence[m.CitizenUpdate | m.MergeConflict]) -> _BatchRows:
    """The rows of a batch, one per key, as the row-by-row statements used to leave them.

    history: the first record of a (pin, version) (DO NOTHING kept the first of a re-emit);
    citizens: each pin's highest version, its first record on a tie;
    conflicts: of the records of a (pin, event_id), the newest, the last on a tie.
    """
    history: dict[tuple[str, int], m.CitizenUpdate] = {}
    latest: dict[str, m.CitizenUpdate] = {}
    conflicts: dict[tuple[str, str], m.MergeConflict] = {}
    for record in records:
        if isinstance(record, m.CitizenUpdate):
            history.setdefault((record.pin, record.version), record)
            known = latest.get(record.pin)
            if known is None or known.version < record.version:
                latest[record.pin] = record
        else:
            key = (record.pin, record.event_id)
            seen = conflicts.get(key)
            if seen is None or seen.detected_at <= record.detected_at:
                conflicts[key] = record
    return _BatchRows(
        history=[_history_row(u) for u in history.values()],
        citizens=[_citizen_row(u) for u in latest.values()],
        conflicts=[_conflict_row(c) for c in conflicts.values()],
    )


async def write_rows(cur: psycopg.AsyncCursor[Any], records: Sequence[StoreRecord]) -> None:
    """Write the rows of `records` (history, current rows, conflicts) in the caller's
    transaction: the synchronizer's batches, and a backfill's (`services.backfill`)."""
    if not records:
        return
    rows = _batch_rows(records)
    await cur.execute(_STAGE_ROWS)
    moves: list[str] = []
    for table, columns, staged, move in (
        ("stage_history", _HISTORY_COLUMNS, rows.history, _INSERT_HISTORY),
        ("stage_citizens", CITIZEN_COLUMNS, rows.citizens, _UPSERT_CITIZENS),
        ("stage_conflicts", _CONFLICT_COLUMNS, rows.conflicts, _UPSERT_CONFLICTS),
    ):
        if staged:
            await copy_rows(cur, table, columns, staged)
            moves.append(move)
    # No parameters: one round trip for all of them (simple query protocol).
    await cur.execute(";".join(moves))
