"""Sector-record matching in the central store: candidates, decisions and reviews.

Candidates for a whole batch come from one query: the citizens born on any of the records'
birth dates (or their day/month swaps), and those holding one of the records' legacy IDs in
`citizen_aliases`, each with its aliases (the store keeps no hometown and no former names:
the matcher counts those as missing). Decisions are inserted once per record event
(`ON CONFLICT DO NOTHING`, then read back: the first worker's decision wins), in the same
transaction as the reviews the REVIEW decisions open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from popsync.adapters.postgres.database import Database
from popsync.domain.pin import Sex
from popsync.identity.decisions import BlockingQuery, Decision, Review
from popsync.identity.matching import CandidateCitizen, MatchOutcome

_CANDIDATES = """
    SELECT c.pin, c.full_name, c.birth_date, c.sex, c.birthplace_province,
           coalesce((SELECT array_agg(a.alias ORDER BY a.alias)
                       FROM citizen_aliases a WHERE a.pin = c.pin), '{}')
      FROM citizens c
     WHERE c.full_name IS NOT NULL AND c.birth_date IS NOT NULL AND c.sex IN ('M', 'F')
       AND (c.birth_date = ANY(%(dates)s)
            OR c.pin IN (SELECT pin FROM citizen_aliases WHERE alias = ANY(%(aliases)s)))
"""
_COLUMNS = (
    "event_id, source_registry, outcome, method, reason, score, pin, candidates,"
    " decided_by, decided_at, audit, review_id"
)
_DECISIONS = f"SELECT {_COLUMNS} FROM match_decisions WHERE event_id = ANY(%s)"  # noqa: S608
INSERT_DECISION = f"""
    INSERT INTO match_decisions ({_COLUMNS})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (event_id) DO NOTHING
"""  # noqa: S608 - constant column list, values are parameters
# Only for a record whose stored decision is REVIEW (another worker may have decided first).
_INSERT_REVIEW = """
    INSERT INTO match_reviews (review_id, event_id, source_registry, source_province, status,
                               original_topic, original_key, original_value, created_at)
    SELECT %(review_id)s, d.event_id, %(source_registry)s, %(source_province)s, 'PENDING',
           %(topic)s, %(key)s, %(value)s, d.decided_at
      FROM match_decisions d
     WHERE d.event_id = %(event_id)s AND d.outcome = 'REVIEW'
    ON CONFLICT (review_id) DO NOTHING
"""


def decision_row(d: Decision) -> tuple[Any, ...]:
    return (
        d.event_id,
        d.source_registry,
        d.outcome.value,
        d.method,
        d.reason,
        d.score,
        d.pin,
        Jsonb([[pin, score] for pin, score in d.candidates]),
        d.decided_by,
        d.decided_at,
        Jsonb(dict(d.audit)),
        d.review_id,
    )


def decision_from_row(row: Sequence[Any]) -> Decision:
    (event_id, source, outcome, method, reason, score, pin, candidates, by, at, audit, review) = row
    return Decision(
        event_id=event_id,
        source_registry=source,
        outcome=MatchOutcome(outcome),
        method=method,
        reason=reason,
        score=float(score),
        pin=pin,
        candidates=tuple((str(p), float(s)) for p, s in candidates),
        decided_by=by,
        decided_at=at,
        audit=audit,
        review_id=review,
    )


def _candidate(row: Sequence[Any]) -> CandidateCitizen:
    pin, full_name, birth_date, sex, birthplace, aliases = row
    checked: Sex = "F" if sex == "F" else "M"
    return CandidateCitizen(
        pin=pin,
        full_name=full_name,
        birth_date=birth_date,
        sex=checked,
        birthplace_province=birthplace,
        aliases=tuple(aliases),
    )


class PostgresMatchingStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def decisions(self, event_ids: Sequence[str]) -> Mapping[str, Decision]:
        if not event_ids:
            return {}
        async with self._db.transaction() as cur:
            await cur.execute(_DECISIONS, (sorted(set(event_ids)),))
            return {row[0]: decision_from_row(row) for row in await cur.fetchall()}

    async def candidates(self, query: BlockingQuery) -> Sequence[CandidateCitizen]:
        if not query:
            return []
        params = {"dates": sorted(query.birth_dates), "aliases": sorted(query.legacy_ids)}
        async with self._db.transaction() as cur:
            await cur.execute(_CANDIDATES, params)
            return [_candidate(row) for row in await cur.fetchall()]

    async def record(
        self, decisions: Sequence[Decision], reviews: Sequence[Review]
    ) -> Mapping[str, Decision]:
        if not decisions and not reviews:
            return {}
        async with self._db.transaction() as cur:
            ordered = sorted(decisions, key=lambda d: d.event_id)  # one lock order for all workers
            if ordered:
                await cur.executemany(INSERT_DECISION, [decision_row(d) for d in ordered])
            if reviews:
                await cur.executemany(
                    _INSERT_REVIEW,
                    [
                        {
                            "review_id": r.review_id,
                            "event_id": r.event_id,
                            "source_registry": r.source_registry,
                            "source_province": r.source_province,
                            "topic": r.original_topic,
                            "key": r.original_key,
                            "value": r.original_value,
                        }
                        for r in reviews
                    ],
                )
            await cur.execute(_DECISIONS, (sorted({d.event_id for d in decisions}),))
            return {row[0]: decision_from_row(row) for row in await cur.fetchall()}
