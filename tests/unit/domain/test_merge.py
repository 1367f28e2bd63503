"""Merge rules: authority, later-wins, duplicates, conflicts, order independence."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from popsync.contract import models as m
from popsync.domain.merge import (
    Applied,
    CitizenState,
    Duplicate,
    Rejected,
    apply_event,
    fold,
)
from tests.builders import (
    BIRTH,
    PIN,
    address,
    story,
    story_annulment,
    story_birth,
    story_death,
    story_event,
    story_marriage,
    story_move,
)

CS, ID = m.SourceRegistry.CIVIL_STATUS, m.SourceRegistry.ID_CARD


def apply_all(events: list[m.RegistryEvent]) -> CitizenState:
    state = CitizenState(pin=PIN)
    for e in events:
        outcome = apply_event(state, e)
        if isinstance(outcome, Applied):
            state = outcome.state
    return state


def test_birth_creates_the_citizen() -> None:
    outcome = apply_event(CitizenState(pin=PIN), story_birth())
    assert isinstance(outcome, Applied)
    assert outcome.version == 1
    assert outcome.snapshot.full_name == "Nguyễn Văn An"
    assert outcome.snapshot.marital_status is m.MaritalStatus.SINGLE
    assert "full_name" in outcome.changed_fields


def test_same_event_twice_is_a_no_op() -> None:
    state = apply_all([story_birth()])
    assert isinstance(apply_event(state, story_birth()), Duplicate)


def test_same_event_id_with_other_content_is_rejected() -> None:
    state = apply_all([story_birth()])
    changed = story_birth().model_copy(update={"source_sequence": 99})
    outcome = apply_event(state, changed)
    assert isinstance(outcome, Rejected)
    assert outcome.conflict.code == "DUPLICATE_EVENT_ID_DIFFERENT_CONTENT"


def test_later_event_time_wins_whatever_the_arrival_order() -> None:
    early, late = story_move(2, date(2020, 1, 1), "26734"), story_move(3, date(2022, 1, 1), "26737")
    for order in ([early, late], [late, early]):
        state = apply_all([story_birth(), *order])
        assert state.current().permanent_residence == address("26737")


def test_move_after_death_is_a_conflict_even_when_it_arrives_first() -> None:
    after_death = story_move(3, date(2024, 6, 1), "26737")
    state = apply_all([story_birth(), after_death])
    outcome = apply_event(state, story_death(4, date(2024, 1, 1)))
    assert isinstance(outcome, Applied)
    assert outcome.snapshot.life_status is m.LifeStatus.DECEASED
    assert outcome.snapshot.permanent_residence is None  # the move never applied
    assert {c.code for c in outcome.new_conflicts.values()} == {"SUBJECT_DECEASED"}


def test_event_before_birth_is_a_conflict() -> None:
    _, conflicts = fold(PIN, [story_birth(), story_move(2, date(2001, 1, 1), "26734")])
    assert [c.code for c in conflicts.values()] == ["EVENT_BEFORE_BIRTH"]


def test_a_registry_cannot_set_fields_it_does_not_own() -> None:
    bad = story_move(2, date(2020, 1, 1), "26734").model_copy(update={"source_registry": ID})
    _, conflicts = fold(PIN, [story_birth(), bad])
    assert [c.code for c in conflicts.values()] == ["NOT_AUTHORITATIVE"]


def test_divorce_without_marriage_is_a_conflict() -> None:
    payload = m.DivorceRecorded(divorce_date=date(2030, 1, 1), court_decision_number="C-1")
    _, conflicts = fold(PIN, [story_birth(), story_event("ev-2", date(2025, 1, 1), payload, CS)])
    assert [c.code for c in conflicts.values()] == ["NOT_MARRIED"]


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(story()),
    duplicates=st.lists(st.sampled_from(story()), max_size=6),
    positions=st.lists(st.integers(min_value=0, max_value=20), max_size=6),
)
def test_any_order_and_duplication_converges_to_one_state(
    order: list[m.RegistryEvent], duplicates: list[m.RegistryEvent], positions: list[int]
) -> None:
    arrival = list(order)
    for dup, pos in zip(duplicates, positions, strict=False):
        arrival.insert(min(pos, len(arrival)), dup)
    state = apply_all(arrival)
    reference = apply_all(story())
    assert state.current() == reference.current()
    assert state.version == reference.version == len(story())
    assert {k: c.code for k, c in state.conflicts.items()} == {"ev-9": "SUBJECT_DECEASED"}
    assert state.current().full_name == "Nguyễn Văn Bình"
    assert state.current().marital_status is m.MaritalStatus.DIVORCED
    assert state.current().permanent_residence == address("26737")


def test_state_rebuilt_from_its_events_equals_the_live_state() -> None:
    live = apply_all(story())
    rebuilt = CitizenState.from_events(PIN, list(live.events.values()))
    assert rebuilt == live


def test_a_conflict_caused_by_arrival_order_is_resolved_when_the_missing_event_arrives() -> None:
    payload = m.DivorceRecorded(divorce_date=date(2023, 2, 2), court_decision_number="C-9")
    divorce = story_event("ev-7", date(2023, 2, 2), payload, CS)
    state = apply_all([story_birth(), divorce])
    assert {c.code for c in state.conflicts.values()} == {"NOT_MARRIED"}
    outcome = apply_event(state, story_marriage(4, date(2022, 1, 1)))
    assert isinstance(outcome, Applied)
    assert list(outcome.resolved_conflicts) == ["ev-7"]
    assert not outcome.state.conflicts
    assert outcome.snapshot.marital_status is m.MaritalStatus.DIVORCED


def test_legal_dates_are_read_in_vietnam_time() -> None:
    # 06:00 on the birth day in Hà Nội is the evening before in UTC: not "before birth".
    early = story_move(2, BIRTH, "26734").model_copy(
        update={"occurred_at": datetime(2003, 1, 1, 23, tzinfo=UTC)}
    )
    _, conflicts = fold(PIN, [story_birth(), early])
    assert not conflicts


def test_an_annulled_death_reactivates_the_citizen_and_releases_what_it_blocked() -> None:
    blocked = story_move(3, date(2024, 6, 1), "26737")
    state = apply_all([story_birth(), story_death(2, date(2024, 1, 1)), blocked])
    assert state.current().life_status is m.LifeStatus.DECEASED
    assert {c.code for c in state.conflicts.values()} == {"SUBJECT_DECEASED"}
    outcome = apply_event(state, story_annulment(4, date(2024, 9, 1)))
    assert isinstance(outcome, Applied)
    assert outcome.snapshot.life_status is m.LifeStatus.ALIVE
    assert outcome.snapshot.death_date is None
    assert outcome.snapshot.permanent_residence == address("26737")  # void from the start
    assert set(outcome.changed_fields) == {"life_status", "death_date", "permanent_residence"}
    assert list(outcome.resolved_conflicts) == ["ev-3"]
    later = apply_event(outcome.state, story_move(5, date(2025, 1, 1), "26740"))
    assert isinstance(later, Applied) and not later.new_conflicts


def test_an_annulment_only_voids_the_death_it_names() -> None:
    state = apply_all(
        [story_birth(), story_death(2, date(2024, 1, 1)), story_annulment(3, date(2024, 2, 1), "X")]
    )
    assert state.current().life_status is m.LifeStatus.DECEASED
    assert {k: c.code for k, c in state.conflicts.items()} == {"ev-3": "NO_DEATH_TO_ANNUL"}


@settings(max_examples=100, deadline=None)
@given(
    order=st.permutations(
        [
            story_birth(),
            story_death(2, date(2024, 1, 1)),
            story_annulment(3, date(2024, 3, 1)),
            story_move(4, date(2024, 6, 1), "26737"),
        ]
    )
)
def test_an_annulment_arriving_before_its_death_converges_too(order: list[m.RegistryEvent]) -> None:
    state = apply_all(order)
    assert state.current().life_status is m.LifeStatus.ALIVE
    assert state.current().permanent_residence == address("26737")
    assert not state.conflicts


class Unreadable(Mapping[str, m.RegistryEvent]):
    """A state's events that may be counted and listed, never read."""

    def __init__(self, events: list[m.RegistryEvent]) -> None:
        self._ids = [e.event_id for e in events]

    def __getitem__(self, event_id: str) -> m.RegistryEvent:
        if event_id in self._ids:
            raise AssertionError(f"earlier event {event_id} was read")
        raise KeyError(event_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def test_an_event_that_comes_last_merges_without_reading_the_earlier_events() -> None:
    earlier = story()[:7]
    state = CitizenState.from_events(PIN, earlier)
    sealed = CitizenState(
        PIN,
        Unreadable(earlier),
        state.snapshot,
        state.conflicts,
        state.last_order,
        state.registered_birth,
    )
    later = story_move(8, date(2023, 6, 1), "26740")
    outcome = apply_event(sealed, later)
    assert isinstance(outcome, Applied)
    reference = CitizenState.from_events(PIN, [*earlier, later])
    assert outcome.snapshot == reference.current()
    assert outcome.version == reference.version == 8
    assert outcome.changed_fields == ("permanent_residence",)


@settings(max_examples=200, deadline=None)
@given(order=st.permutations([*story(), story_annulment(10, date(2024, 5, 1))]))
def test_each_merge_equals_folding_everything_received_so_far(
    order: list[m.RegistryEvent],
) -> None:
    state = CitizenState(PIN)
    for i, e in enumerate(order):
        outcome = apply_event(state, e)
        assert isinstance(outcome, Applied)
        reference = CitizenState.from_events(PIN, order[: i + 1])
        new = outcome.state
        assert (new.current(), new.conflicts, new.version) == (
            reference.current(),
            reference.conflicts,
            reference.version,
        )
        assert (new.last_order, new.registered_birth) == (
            reference.last_order,
            reference.registered_birth,
        )
        assert dict(outcome.new_conflicts) == {
            k: c for k, c in reference.conflicts.items() if k not in state.conflicts
        }
        assert dict(outcome.resolved_conflicts) == {
            k: c for k, c in state.conflicts.items() if k not in reference.conflicts
        }
        state = new


# The folds of a fixed set of stories, by FOLD_RULES_VERSION. The synchronizer persists folds
# and trusts one only while the version it was made with is current, so a change to the rules
# that folds any of these differently must bump the version and record the new digest here.
FOLD_DIGESTS = {1: "da447a5c"}


def fold_digest() -> str:
    import hashlib
    import itertools
    import json

    stories = [story(), [*story(), story_annulment(10, date(2024, 5, 1))], story()[:4]]
    stories += [list(p) for p in itertools.islice(itertools.permutations(story()[1:6]), 0, 120, 7)]
    folds = []
    for events in stories:
        snapshot, conflicts = fold(PIN, events)
        folds.append([snapshot.model_dump(mode="json"), {k: c.code for k, c in conflicts.items()}])
    return hashlib.sha256(json.dumps(folds, sort_keys=True).encode()).hexdigest()[:8]


def test_a_change_to_the_fold_rules_comes_with_a_new_rules_version() -> None:
    from popsync.domain.merge import FOLD_RULES_VERSION

    assert FOLD_DIGESTS.get(FOLD_RULES_VERSION) == fold_digest(), (
        "the merge rules fold these stories differently now: bump FOLD_RULES_VERSION "
        "and record the new digest in FOLD_DIGESTS"
    )
