"""`popsync review list` and `popsync review resolve`: the operator's side of record matching.

A sector record without PIN whose best match is neither clear enough to link nor poor enough
to dismiss waits in `match_reviews` (PENDING), its candidates and scores in `match_decisions`.

`list` prints the pending reviews: id, source registry, age, best score, and the candidates
with their PINs masked. No names, no record numbers: those stay in the store and on the
review topic.

`resolve ID --link PIN` settles a review by linking the record to the citizen with that PIN:
it re-publishes the original record to the registry-events topic with `subject_pin` = PIN,
keyed by it, as a new event whose id derives from the review id (`operator_event_id`) and
whose correlation id is the review id. That event then flows validator -> synchronizer ->
store like any other, so the link is audited as the citizen's `citizen_history` row (version,
event id, source); `match_decisions` keeps the operator's decision under the new event id.
`resolve ID --reject` reports the record unmatched (an `UnmatchedRecord` on the
unmatched-records topic) instead.

In one transaction, with the review's row locked (a second operator waits, then is refused):
check the review is PENDING and the PIN names a citizen, send the event and wait until the
broker has it, then mark the review RESOLVED or REJECTED (operator, time, PIN) and store the
decision. If the commit fails after the send, the review stays PENDING and resolving it again
sends the same event (same id, same content: a no-op for the synchronizer).
A review is settled once: resolving it again, or an unknown id, is refused (exit code 2).
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.database import connect
from popsync.adapters.postgres.matching import INSERT_DECISION, decision_row
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.pin import PinError, mask_pin, parse_pin
from popsync.identity.decisions import (
    OPERATOR_METHOD,
    REVIEW_LINKED,
    REVIEW_REJECTED,
    Decision,
    operator_event_id,
)
from popsync.identity.matching import MatchOutcome
from popsync.identity.sector_matching import unmatched_report
from popsync.runtime.messages import Headers, OutboundMessage
from popsync.settings import Settings
from popsync.trust.signing import Signer

EVENT_CODEC = Codec(m.RegistryEvent)
MAX_OPERATOR_LENGTH = 64

_PENDING = """
    SELECT r.review_id, r.source_registry, r.created_at, d.score, d.candidates
      FROM match_reviews r JOIN match_decisions d ON d.event_id = r.event_id
     WHERE r.status = 'PENDING'
     ORDER BY r.created_at, r.review_id
"""
_LOCK = """
    SELECT r.status, r.decided_by, r.decided_at, r.original_value, d.score, d.candidates,
           d.source_registry
      FROM match_reviews r JOIN match_decisions d ON d.event_id = r.event_id
     WHERE r.review_id = %s
       FOR UPDATE OF r
"""
_SETTLE = """
    UPDATE match_reviews
       SET status = %s, pin = %s, decided_by = %s, decided_at = %s, resolution_event_id = %s
     WHERE review_id = %s
"""


class ReviewError(Exception):
    """A refused command (unknown or settled review, bad PIN): exit code 2. The message holds
    no personal data (PINs masked)."""


@dataclass(frozen=True)
class PendingReview:
    review_id: str
    source_registry: str
    created_at: datetime
    score: float
    candidates: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Resolution:
    review_id: str
    status: str  # RESOLVED or REJECTED
    topic: str
    event_id: str  # the linking event (RESOLVED) or the record reported unmatched (REJECTED)
    pin: str | None


def _candidates(raw: Any) -> tuple[tuple[str, float], ...]:
    return tuple((str(pin), float(score)) for pin, score in raw)


def pending_reviews(settings: Settings) -> list[PendingReview]:
    with connect(settings.postgres) as conn:
        rows = conn.execute(_PENDING).fetchall()
    return [
        PendingReview(review_id, source, created, float(score), _candidates(candidates))
        for review_id, source, created, score, candidates in rows
    ]


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def format_reviews(reviews: Sequence[PendingReview], now: datetime) -> list[str]:
    """The table `review list` prints: PINs masked, no names."""
    if not reviews:
        return ["no pending reviews"]
    width = max(len("REVIEW ID"), *(len(r.review_id) for r in reviews))
    lines = [
        f"{'REVIEW ID':<{width}}  {'SOURCE':<16}  {'AGE':>7}  {'BEST':>6}  CANDIDATES",
    ]
    for r in reviews:
        shown = ", ".join(f"{mask_pin(pin)} {score:.1f}" for pin, score in r.candidates)
        lines.append(
            f"{r.review_id:<{width}}  {r.source_registry:<16}  {_age(now - r.created_at):>7}  "
            f"{r.score:>6.1f}  {len(r.candidates)}: {shown}"
        )
    lines.append(f"{len(reviews)} pending review{'' if len(reviews) == 1 else 's'}")
    return lines


def list_reviews(settings: Settings, *, out: TextIO = sys.stdout) -> int:
    for line in format_reviews(pending_reviews(settings), datetime.now(UTC)):
        print(line, file=out)
    return 0


def operator_name(given: str | None) -> str:
    """Who decides: `--operator`, else the login name; bounded, no control characters."""
    name = (given or os.environ.get("USER") or os.environ.get("LOGNAME") or "").strip()
    if not name:
        raise ReviewError("say who decides: --operator NAME (no $USER is set)")
    if len(name) > MAX_OPERATOR_LENGTH or any(
        unicodedata.category(ch) in ("Cc", "Cf") for ch in name
    ):
        raise ReviewError(f"operator name must be at most {MAX_OPERATOR_LENGTH} printable chars")
    return name


def _checked_pin(text: str) -> str:
    try:
        pin = parse_pin(text)
    except PinError as exc:
        raise ReviewError(f"--link is not a valid PIN ({exc.reason})") from None
    if pin.value != text:
        raise ReviewError("--link is not a valid PIN (surrounding whitespace)")
    return pin.value


def resolve(
    settings: Settings,
    review_id: str,
    *,
    link: str | None,
    operator: str | None,
    now: datetime | None = None,
    signer: Signer | None = None,
) -> Resolution:
    """Settle one pending review: link its record to the citizen `link`, or reject it (None).

    Raises ReviewError when refused; DeliveryFailed if the broker did not take the event
    (nothing is marked then).
    """
    who = operator_name(operator)
    pin = None if link is None else _checked_pin(link)
    if pin is not None and signer is None:
        # The linked record goes back through the validator, which accepts only signed
        # events: the operator signs for the sector registry, with a key of its kind.
        raise ReviewError(
            "linking sends the record again, signed: give --signing-key, the key of a "
            "publisher of the record's registry kind (popsync keys generate)"
        )
    decided_at = now or datetime.now(UTC)
    with connect(settings.postgres) as conn, conn.transaction():
        row = conn.execute(_LOCK, (review_id,)).fetchone()
        if row is None:
            raise ReviewError(f"no review with id {review_id[:80]!r}")
        status, by, at, original, score, raw_candidates, source = row
        if status != "PENDING":
            raise ReviewError(
                f"review {review_id} is already {status} (by {by} at {at:%Y-%m-%d %H:%M:%S %Z}); "
                "a review is settled once"
            )
        if (
            pin is not None
            and conn.execute("SELECT 1 FROM citizens WHERE pin = %s", (pin,)).fetchone() is None
        ):
            raise ReviewError(f"no citizen with PIN {mask_pin(pin)} in the central store")
        record: m.RegistryEvent = EVENT_CODEC.decode(bytes(original))
        candidates = _candidates(raw_candidates)
        if pin is None:
            decision = Decision(
                event_id=record.event_id,
                source_registry=source,
                outcome=MatchOutcome.UNMATCHED,
                method=OPERATOR_METHOD,
                reason=REVIEW_REJECTED,
                score=float(score),
                pin=None,
                candidates=candidates,
                decided_by=who,
                decided_at=decided_at,
                review_id=review_id,
            )
            output = unmatched_report(settings.topics, record, decision, review_id=review_id)
            _send(settings, output)
            conn.execute(_SETTLE, ("REJECTED", None, who, decided_at, None, review_id))
            return Resolution(review_id, "REJECTED", output.topic, record.event_id, None)
        linked = record.model_copy(
            update={
                "event_id": operator_event_id(review_id),
                "subject_pin": pin,
                "correlation_id": review_id,
            }
        )
        value = EVENT_CODEC.encode(linked)
        headers: Headers = [*signer.headers(pin.encode(), value, linked)] if signer else []
        output = OutboundMessage(settings.topics.registry_events, pin.encode(), value, headers)
        _send(settings, output)
        chosen = {p: s for p, s in candidates}.get(pin)
        decision = Decision(
            event_id=linked.event_id,
            source_registry=source,
            outcome=MatchOutcome.LINKED,
            method=OPERATOR_METHOD,
            reason=REVIEW_LINKED,
            score=float(score) if chosen is None else chosen,
            pin=pin,
            candidates=candidates,
            decided_by=who,
            decided_at=decided_at,
            audit={
                "review_id": review_id,
                "review_score": float(score),
                "chosen_was_candidate": chosen is not None,
            },
            review_id=review_id,
        )
        conn.execute(INSERT_DECISION, decision_row(decision))
        conn.execute(_SETTLE, ("RESOLVED", pin, who, decided_at, linked.event_id, review_id))
        return Resolution(review_id, "RESOLVED", output.topic, linked.event_id, pin)


def _send(settings: Settings, output: OutboundMessage) -> None:
    producer = BatchProducer(settings.kafka)
    try:
        producer.produce(output)
        producer.flush_sync(timeout=30)
    finally:
        producer.close()


def describe(resolution: Resolution) -> str:
    """One line for the operator: PIN masked."""
    if resolution.status == "RESOLVED" and resolution.pin is not None:
        return (
            f"review {resolution.review_id}: linked to citizen {mask_pin(resolution.pin)}; "
            f"event {resolution.event_id} sent to {resolution.topic}"
        )
    return (
        f"review {resolution.review_id}: rejected; record {resolution.event_id} reported "
        f"unmatched on {resolution.topic}"
    )
