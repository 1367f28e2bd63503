"""`popsync.identity.decisions.MatchingStore`: a decision is stored once per event id (the
first wins) and read back equal; a review is kept only for an event whose stored decision is
REVIEW; candidates are the citizens born on one of the query's dates or holding one of its
legacy ids. Run against `tests.fakes.InMemoryMatchingStore` and
`popsync.adapters.postgres.matching.PostgresMatchingStore`."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from popsync.identity import CandidateCitizen, MatchOutcome
from popsync.identity.decisions import BlockingQuery, Decision, Review, blocking_query
from tests.fakes import MatchingUnderTest

pytestmark = pytest.mark.integration

AT = datetime(2024, 3, 1, 9, 30, 15, 123000, tzinfo=UTC)
KHAI = "079191000101"
HUNG = "001085000102"
HUNG_TWIN = "001085000103"


def decision(event_id: str, outcome: MatchOutcome, **fields: Any) -> Decision:
    linked = outcome is MatchOutcome.LINKED
    base: dict[str, Any] = {
        "event_id": event_id,
        "source_registry": "SOCIAL_INSURANCE",
        "outcome": outcome,
        "method": "PROBABILISTIC" if outcome is not MatchOutcome.UNMATCHED else "NONE",
        "reason": f"MATCH_{outcome.value}",
        "score": 0.0 if outcome is MatchOutcome.UNMATCHED else 0.875,
        "pin": KHAI if linked else None,
        "candidates": () if outcome is MatchOutcome.UNMATCHED else ((KHAI, 0.875), (HUNG, 0.5)),
        "decided_by": "popsync",
        "decided_at": AT,
        "audit": {  # the shape of `MatchDecision.audit()`
            "outcome": outcome.value,
            "score": 0.875,
            "runner_up_score": None,
            "candidates_considered": 2,
            "fields": [{"field": "full_name", "level": "TYPO", "weight": 1.5, "similarity": 0.93}],
        },
    }
    return Decision(**{**base, **fields})


def review(event_id: str, review_id: str | None = None, value: bytes = b"record") -> Review:
    return Review(
        review_id=review_id or event_id,
        event_id=event_id,
        source_registry="SOCIAL_INSURANCE",
        source_province="79",
        original_topic="popsync.registry-events.v1",
        original_key=b"7910000001",
        original_value=value,
    )


def assert_same(found: Decision, expected: Decision) -> None:
    """Every field, the audit (left out of `Decision`'s equality) included."""
    assert found == expected
    assert dict(found.audit) == dict(expected.audit)


# --------------------------------------------------------------------------------------------
# Decisions and reviews


def test_no_decision_is_known_at_first(matching: MatchingUnderTest) -> None:
    async def scenario() -> None:
        assert await matching.store.decisions([]) == {}
        assert await matching.store.decisions(["ev-1"]) == {}
        assert await matching.store.record([], []) == {}

    asyncio.run(scenario())
    assert matching.reviews() == {}


def test_recorded_decisions_read_back_equal(matching: MatchingUnderTest) -> None:
    operator = decision(
        "ev-4",
        MatchOutcome.LINKED,
        method="OPERATOR",
        reason="REVIEW_LINKED",
        decided_by="operator@example.vn",
        decided_at=AT.astimezone(timezone(timedelta(hours=7))),
        review_id="ev-2",
        audit={},
    )
    decisions = [
        decision("ev-1", MatchOutcome.LINKED),
        decision("ev-2", MatchOutcome.REVIEW),
        decision("ev-3", MatchOutcome.UNMATCHED),
        operator,
    ]

    async def scenario() -> tuple[dict[str, Decision], dict[str, Decision]]:
        recorded = dict(await matching.store.record(decisions, []))
        return recorded, dict(
            await matching.store.decisions(["ev-3", "ev-1", "ev-9", "ev-2", "ev-4"])
        )

    recorded, read = asyncio.run(scenario())
    for found in (recorded, read):
        assert set(found) == {d.event_id for d in decisions}
        for expected in decisions:
            assert_same(found[expected.event_id], expected)


def test_the_first_decision_of_an_event_wins(matching: MatchingUnderTest) -> None:
    first = decision("ev-1", MatchOutcome.REVIEW)
    later = decision("ev-1", MatchOutcome.LINKED, decided_at=AT + timedelta(hours=1))
    new = decision("ev-2", MatchOutcome.UNMATCHED)

    async def scenario() -> tuple[dict[str, Decision], dict[str, Decision]]:
        await matching.store.record([first], [])
        recorded = dict(await matching.store.record([later, new], []))
        return recorded, dict(await matching.store.decisions(["ev-1", "ev-2"]))

    recorded, read = asyncio.run(scenario())
    for found in (recorded, read):
        assert_same(found["ev-1"], first)
        assert_same(found["ev-2"], new)


def test_within_one_batch_the_first_decision_of_an_event_wins(
    matching: MatchingUnderTest,
) -> None:
    first = decision("ev-1", MatchOutcome.UNMATCHED)
    second = decision("ev-1", MatchOutcome.LINKED)

    async def scenario() -> tuple[dict[str, Decision], dict[str, Decision]]:
        recorded = dict(await matching.store.record([first, second], []))
        return recorded, dict(await matching.store.decisions(["ev-1"]))

    recorded, read = asyncio.run(scenario())
    assert_same(recorded["ev-1"], first)
    assert_same(read["ev-1"], first)


def test_a_review_is_kept_with_its_review_decision(matching: MatchingUnderTest) -> None:
    opened = review("ev-1", value=b"\x00avro record")
    asyncio.run(matching.store.record([decision("ev-1", MatchOutcome.REVIEW)], [opened]))
    assert matching.reviews() == {"ev-1": opened}


def test_a_review_is_kept_once(matching: MatchingUnderTest) -> None:
    first = review("ev-1")

    async def scenario() -> None:
        await matching.store.record([decision("ev-1", MatchOutcome.REVIEW)], [first])
        again = [decision("ev-1", MatchOutcome.REVIEW)]
        await matching.store.record(again, [replace(first, original_value=b"re-sent")])

    asyncio.run(scenario())
    assert matching.reviews() == {"ev-1": first}


def test_no_review_is_kept_unless_the_stored_decision_is_review(
    matching: MatchingUnderTest,
) -> None:
    async def scenario() -> None:
        # A review for a LINKED decision, and one for an event that has no decision.
        linked = decision("ev-1", MatchOutcome.LINKED)
        await matching.store.record([linked], [review("ev-1"), review("ev-9")])
        # Another worker decided ev-2 first (UNMATCHED); this batch's REVIEW loses.
        await matching.store.record([decision("ev-2", MatchOutcome.UNMATCHED)], [])
        await matching.store.record([decision("ev-2", MatchOutcome.REVIEW)], [review("ev-2")])

    asyncio.run(scenario())
    assert matching.reviews() == {}


def test_a_review_of_an_earlier_review_decision_is_kept_in_any_batch(
    matching: MatchingUnderTest,
) -> None:
    async def scenario() -> None:
        await matching.store.record([decision("ev-1", MatchOutcome.REVIEW)], [])
        await matching.store.record([decision("ev-2", MatchOutcome.LINKED)], [review("ev-1")])

    asyncio.run(scenario())
    assert matching.reviews() == {"ev-1": review("ev-1")}


def test_a_review_of_an_earlier_review_decision_is_kept_without_decisions(
    matching: MatchingUnderTest,
) -> None:
    async def scenario() -> None:
        await matching.store.record([decision("ev-1", MatchOutcome.REVIEW)], [])
        await matching.store.record([], [review("ev-1")])

    asyncio.run(scenario())
    assert matching.reviews() == {"ev-1": review("ev-1")}


# --------------------------------------------------------------------------------------------
# Candidates


def citizen(pin: str, name: str, born: date, *aliases: str) -> CandidateCitizen:
    sex = "M" if int(pin[3]) % 2 == 0 else "F"
    return CandidateCitizen(pin, name, born, sex, pin[1:3], aliases=tuple(sorted(aliases)))


CITIZENS = [
    citizen(KHAI, "Nguyễn Thị Minh Khai", date(1991, 4, 12)),
    citizen(HUNG, "Trần Văn Hùng", date(1985, 9, 3), "012345678", "001085000999"),
    citizen(HUNG_TWIN, "Trần Văn Hưng", date(1985, 9, 3)),
    citizen("079191000104", "Lê Thị Hoa", date(1991, 12, 4)),  # Khai's day and month swapped
    citizen("001072000105", "Phạm Đình Toàn", date(1972, 1, 1), "987654321"),
]


def found(matching: MatchingUnderTest, query: BlockingQuery) -> dict[str, CandidateCitizen]:
    candidates = asyncio.run(matching.store.candidates(query))
    assert len(candidates) == len({c.pin for c in candidates}), "a citizen came back twice"
    return {c.pin: c for c in candidates}


def test_an_empty_query_selects_nobody(matching: MatchingUnderTest) -> None:
    matching.seed(CITIZENS)
    assert found(matching, BlockingQuery(frozenset(), frozenset())) == {}


def test_candidates_are_the_citizens_born_on_a_queried_date(matching: MatchingUnderTest) -> None:
    matching.seed(CITIZENS)
    by_pin = {c.pin: c for c in CITIZENS}
    query = BlockingQuery(frozenset({date(1985, 9, 3), date(2000, 1, 1)}), frozenset())
    assert found(matching, query) == {HUNG: by_pin[HUNG], HUNG_TWIN: by_pin[HUNG_TWIN]}


def test_a_queried_date_finds_its_day_month_swap_too(matching: MatchingUnderTest) -> None:
    matching.seed(CITIZENS)
    query = blocking_query([(date(1991, 4, 12), None)])
    assert set(found(matching, query)) == {KHAI, "079191000104"}


def test_candidates_include_the_holders_of_a_queried_legacy_id(
    matching: MatchingUnderTest,
) -> None:
    matching.seed(CITIZENS)
    by_pin = {c.pin: c for c in CITIZENS}
    query = blocking_query([(date(1991, 4, 12), "012345678"), (date(2001, 2, 3), "987654321")])
    assert found(matching, query) == {
        KHAI: by_pin[KHAI],
        "079191000104": by_pin["079191000104"],
        HUNG: by_pin[HUNG],  # with both its aliases, not only the one asked for
        "001072000105": by_pin["001072000105"],
    }


def test_a_citizen_selected_twice_comes_back_once(matching: MatchingUnderTest) -> None:
    matching.seed(CITIZENS)
    query = blocking_query([(date(1985, 9, 3), "001085000999")])
    assert set(found(matching, query)) == {HUNG, HUNG_TWIN}


def test_unknown_dates_and_ids_select_nobody(matching: MatchingUnderTest) -> None:
    matching.seed(CITIZENS)
    query = blocking_query([(date(1960, 6, 6), "111111111")])
    assert found(matching, query) == {}
