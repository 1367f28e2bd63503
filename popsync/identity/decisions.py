"""Decisions about sector records without PIN, and the store that keeps them (pure domain).

The validator matches each such record once: its ``Decision`` is stored under the record's
event id, and a re-delivered or re-sent record gets the stored decision back instead of being
matched again (the citizens may have changed since, the answer must not). A REVIEW decision
opens a ``Review`` that an operator settles with ``popsync review resolve``; the operator's
link is a new event whose id ``operator_event_id`` derives from the review id, so resolving
twice publishes the same event twice (a no-op for the synchronizer).

``MatchingStore`` is what the validator needs from the central store:
``popsync.adapters.postgres.matching`` is the PostgreSQL one (the unit tests' fake is in
tests/fakes.py).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from popsync.domain.pin import mask_pin
from popsync.identity.matching import CandidateCitizen, MatchDecision, MatchOutcome
from popsync.identity.matching import _transposed as transposed  # the matcher's own swap

__all__ = [
    "AUTOMATIC",
    "OPERATOR_METHOD",
    "REVIEW_LINKED",
    "REVIEW_REJECTED",
    "BlockingQuery",
    "Decision",
    "MatchingStore",
    "Review",
    "blocking_query",
    "decision_from_match",
    "operator_event_id",
]

AUTOMATIC = "popsync"  # decided_by of the matcher's own decisions
OPERATOR_METHOD = "OPERATOR"  # method of a decision an operator took in review
REVIEW_LINKED = "REVIEW_LINKED"  # reason codes of the operator's decisions
REVIEW_REJECTED = "REVIEW_REJECTED"
# Namespace of the event ids of operator-linked records (uuid5 of the review id).
_OPERATOR_EVENTS = uuid.UUID("5b7f0c1e-3f1d-4c55-9a4e-2f8d8c1a7e01")


def operator_event_id(review_id: str) -> str:
    """Event id of the record an operator links in review: the same for every resolution of
    one review, so a repeated resolution re-sends the same event."""
    return str(uuid.uuid5(_OPERATOR_EVENTS, review_id))


@dataclass(frozen=True, repr=False)
class Decision:
    """What was decided for one sector record (keyed by its event id).

    ``candidates``: (PIN, score) of the top candidates, best first (empty when UNMATCHED).
    ``audit``: the matcher's scores, levels and codes (``MatchDecision.audit``), no personal
    data. ``review_id``: for an operator's decision, the review it settles.
    """

    event_id: str
    source_registry: str
    outcome: MatchOutcome
    method: str
    reason: str
    score: float
    pin: str | None
    candidates: tuple[tuple[str, float], ...]
    decided_by: str
    decided_at: datetime.datetime
    audit: Mapping[str, object] = field(default_factory=dict, compare=False)
    review_id: str | None = None

    def __repr__(self) -> str:
        pin = None if self.pin is None else mask_pin(self.pin)
        return (
            f"Decision(outcome={self.outcome.value}, reason={self.reason}, pin={pin!r}, "
            f"score={self.score:.2f})"
        )


@dataclass(frozen=True, repr=False)
class Review:
    """A REVIEW decision's pending review: the original message, to re-publish once linked."""

    review_id: str
    event_id: str
    source_registry: str
    source_province: str
    original_topic: str
    original_key: bytes | None
    original_value: bytes

    def __repr__(self) -> str:
        return f"Review(source={self.source_registry})"


@dataclass(frozen=True)
class BlockingQuery:
    """Which citizens to load as candidates for a batch of records: those born on one of
    ``birth_dates`` (each record's date and its day/month swap) and those holding one of
    ``legacy_ids`` as an alias."""

    birth_dates: frozenset[datetime.date]
    legacy_ids: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.birth_dates or self.legacy_ids)


def blocking_query(records: Iterable[tuple[datetime.date, str | None]]) -> BlockingQuery:
    """The query for records given as (birth date, legacy id or None)."""
    dates: set[datetime.date] = set()
    legacy: set[str] = set()
    for birth_date, legacy_id in records:
        dates.add(birth_date)
        swapped = transposed(birth_date)
        if swapped is not None:
            dates.add(swapped)
        if legacy_id:
            legacy.add(legacy_id)
    return BlockingQuery(frozenset(dates), frozenset(legacy))


def decision_from_match(
    event_id: str, source_registry: str, match: MatchDecision, decided_at: datetime.datetime
) -> Decision:
    return Decision(
        event_id=event_id,
        source_registry=source_registry,
        outcome=match.outcome,
        method=match.method.value,
        reason=match.reason,
        score=round(match.score, 3),
        pin=match.pin,
        candidates=tuple((c.pin, round(c.score, 3)) for c in match.candidates),
        decided_by=AUTOMATIC,
        decided_at=decided_at,
        audit=match.audit(),
    )


class MatchingStore(Protocol):
    async def decisions(self, event_ids: Sequence[str]) -> Mapping[str, Decision]:
        """The stored decision of each event id that has one."""
        ...

    async def candidates(self, query: BlockingQuery) -> Sequence[CandidateCitizen]:
        """The citizens the query selects, in one round trip."""
        ...

    async def record(
        self, decisions: Sequence[Decision], reviews: Sequence[Review]
    ) -> Mapping[str, Decision]:
        """Store each decision unless its event already has one, and the review of each stored
        REVIEW decision; every event's decision as stored (the first one wins)."""
        ...
