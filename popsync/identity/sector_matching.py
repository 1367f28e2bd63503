"""The validator's matching step: sector records without PIN, linked, reviewed or reported.

For the valid sector records of a batch that carry no subject PIN, in this order:
1. read the decisions already stored for their event ids (a re-delivered or re-sent record
   gets its decision back, never a new one);
2. load the candidate citizens of the others from the central store in one query (blocking by
   birth date, its day/month swap, and legacy ID) and match each record
   (`popsync.identity.match`, thresholds from `POPSYNC_MATCHING__*`);
3. store the new decisions, and a pending review for each REVIEW one, in one transaction;
4. give each record its one output, built from its stored decision:
   LINKED    -> the record on the validated topic with subject_pin = the citizen, keyed by it;
   REVIEW    -> a `MatchReview` on the match-reviews topic (key: the review id);
   UNMATCHED -> an `UnmatchedRecord` on the unmatched-records topic (key: the event id).
The validator sends the outputs with the rest of the batch; the decisions are durable before,
so a crash in between re-sends the same outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.identity.decisions import (
    Decision,
    MatchingStore,
    Review,
    blocking_query,
    decision_from_match,
)
from popsync.identity.folding import default_token_weights
from popsync.identity.matching import (
    CitizenIndex,
    MatchOutcome,
    MatchThresholds,
    SectorRecord,
    SectorSource,
    match,
)
from popsync.runtime.messages import OutboundMessage
from popsync.settings import TopicSettings

if TYPE_CHECKING:  # the runtime imports faust: not needed to build a report (`popsync review`)
    from popsync.runtime.messages import InboundMessage

EVENT_CODEC = Codec(m.RegistryEvent)
REVIEW_CODEC = Codec(m.MatchReview)
UNMATCHED_CODEC = Codec(m.UnmatchedRecord)


def needs_match(event: m.RegistryEvent) -> bool:
    """A valid event the matcher must find the subject of: a sector record without PIN."""
    return event.subject_pin is None and isinstance(event.payload, m.SectorRecordRegistered)


def sector_record(event: m.RegistryEvent) -> SectorRecord:
    """The matcher's view of a validated sector record (names normalized, provinces mapped)."""
    p = event.payload
    if not isinstance(p, m.SectorRecordRegistered):
        raise TypeError(f"not a sector record: {event.event_type.value}")
    return SectorRecord(
        record_id=event.event_id,
        source=SectorSource(event.source_registry.value),
        full_name=p.full_name,
        birth_date=p.birth_date,
        sex="F" if p.sex is m.Sex.F else "M",
        birthplace_province=p.birthplace_province,
        hometown_province=p.hometown_province,
        legacy_id=p.legacy_id,
    )


@dataclass(frozen=True)
class Matched:
    """One record's output; ``event`` is the record as it goes on (re-keyed when LINKED)."""

    output: OutboundMessage
    decision: Decision
    event: m.RegistryEvent


class SectorMatching:
    def __init__(
        self, topics: TopicSettings, thresholds: MatchThresholds, store: MatchingStore
    ) -> None:
        self._topics = topics
        self._thresholds = thresholds
        self._store = store
        self._weights = default_token_weights()  # read once per process

    async def __call__(
        self, records: Sequence[tuple[InboundMessage, m.RegistryEvent]], now: datetime
    ) -> list[Matched]:
        """One result per record, in order. A bug raises: the runtime then finds the record
        at fault and parks it (`popsync.runtime.processing`)."""
        if not records:
            return []
        stored = dict(await self._store.decisions([e.event_id for _, e in records]))
        new: dict[str, tuple[InboundMessage, m.RegistryEvent]] = {}
        for message, event in records:
            if event.event_id not in stored:
                new.setdefault(event.event_id, (message, event))
        if new:
            prepared = [(message, event, sector_record(event)) for message, event in new.values()]
            stored.update(await self._decide(prepared, now))
        return [self._output(event, stored[event.event_id]) for _, event in records]

    async def _decide(
        self,
        records: Sequence[tuple[InboundMessage, m.RegistryEvent, SectorRecord]],
        now: datetime,
    ) -> Mapping[str, Decision]:
        """Match the records against candidates loaded in one query; store the decisions."""
        if not records:
            return {}
        query = blocking_query((r.birth_date, r.legacy_id) for _, _, r in records)
        index = CitizenIndex(await self._store.candidates(query), token_weights=self._weights)
        decisions: list[Decision] = []
        reviews: list[Review] = []
        for message, event, record in records:
            found = match(record, index, self._thresholds)
            decision = decision_from_match(event.event_id, event.source_registry.value, found, now)
            decisions.append(decision)
            if decision.outcome is MatchOutcome.REVIEW:
                reviews.append(
                    Review(
                        review_id=event.event_id,
                        event_id=event.event_id,
                        source_registry=event.source_registry.value,
                        source_province=event.source_province,
                        original_topic=message.topic,
                        original_key=message.key,
                        original_value=message.value or b"",
                    )
                )
        return await self._store.record(decisions, reviews)

    def _output(self, event: m.RegistryEvent, decision: Decision) -> Matched:
        if decision.outcome is MatchOutcome.LINKED and decision.pin is not None:
            linked = event.model_copy(update={"subject_pin": decision.pin})
            output = OutboundMessage(
                self._topics.validated_events, decision.pin.encode(), EVENT_CODEC.encode(linked)
            )
            return Matched(output, decision, linked)
        if decision.outcome is MatchOutcome.REVIEW:
            review = m.MatchReview(
                review_id=event.event_id,
                event_id=event.event_id,
                source_registry=event.source_registry,
                source_province=event.source_province,
                candidates=[m.MatchCandidate(pin=p, score=s) for p, s in decision.candidates],
                score=decision.score,
                method=decision.method,
                reason=decision.reason,
                created_at=decision.decided_at,
            )
            output = OutboundMessage(
                self._topics.match_reviews, event.event_id.encode(), REVIEW_CODEC.encode(review)
            )
            return Matched(output, decision, event)
        return Matched(unmatched_report(self._topics, event, decision), decision, event)


def unmatched_report(
    topics: TopicSettings,
    event: m.RegistryEvent,
    decision: Decision,
    review_id: str | None = None,
) -> OutboundMessage:
    """The `UnmatchedRecord` telling the sector database that no citizen matches its record."""
    payload = event.payload
    if not isinstance(payload, m.SectorRecordRegistered):
        raise TypeError(f"not a sector record: {event.event_type.value}")
    report = m.UnmatchedRecord(
        event_id=event.event_id,
        source_registry=event.source_registry,
        source_province=event.source_province,
        record_number=payload.record_number,
        reason=decision.reason,
        score=decision.score,
        decided_by=decision.decided_by,
        decided_at=decision.decided_at,
        review_id=review_id,
    )
    return OutboundMessage(
        topics.unmatched_records, event.event_id.encode(), UNMATCHED_CODEC.encode(report)
    )
