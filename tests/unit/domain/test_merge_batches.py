"""Merging a citizen's events a batch at a time (`apply_events`): any arrival order, any
split into batches, any duplication converges to the state folded from the events; each
conflict is surfaced once and resolved once; a long history is folded from its legal-order
index, not from its stored events."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsync.contract import models as m
from popsync.domain import merge
from popsync.domain.merge import (
    INDEXED_FROM,
    Applied,
    CitizenState,
    Conflict,
    Duplicate,
    apply_events,
    legal_order,
    repeat_outcome,
)
from tests.builders import BIRTH, PIN, story, story_annulment, story_move


def long_history(moves: int) -> list[m.RegistryEvent]:
    """The story (a death annulled, conflicts, a resolved divorce) and `moves` more
    residence registrations, some after the death (conflicts until the annulment)."""
    extra = [
        story_move(100 + n, BIRTH + timedelta(days=97 * n), f"{26700 + n % 90:05d}")
        for n in range(moves)
    ]
    return [*story(), story_annulment(10, date(2024, 5, 1)), *extra]


HISTORY = long_history(INDEXED_FROM + 6)  # long enough for the index to be kept


def merge_in_batches(
    state: CitizenState, batches: Sequence[Sequence[m.RegistryEvent]]
) -> tuple[CitizenState, list[Applied]]:
    """What the synchronizer does with each batch: re-sends skipped, the rest applied."""
    applied: list[Applied] = []
    for batch in batches:
        new: dict[str, m.RegistryEvent] = {}
        for event in batch:
            repeat = repeat_outcome(state, event, new)
            assert repeat is None or isinstance(repeat, Duplicate)
            if repeat is None:
                new[event.event_id] = event
        if new:
            outcomes = apply_events(state, list(new.values()))
            applied += outcomes
            state = outcomes[-1].state
    return state, applied


def split(events: list[m.RegistryEvent], cuts: list[int]) -> list[list[m.RegistryEvent]]:
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    return [events[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def assert_same_state(state: CitizenState, reference: CitizenState) -> None:
    assert (state.current(), dict(state.conflicts), state.version) == (
        reference.current(),
        dict(reference.conflicts),
        reference.version,
    )
    assert (state.last_order, state.registered_birth) == (
        reference.last_order,
        reference.registered_birth,
    )
    assert dict(state.events) == dict(reference.events)
    if state.ordered is not None:
        assert list(state.ordered) == sorted(reference.events.values(), key=legal_order)


@settings(max_examples=150, deadline=None)
@given(
    order=st.permutations(HISTORY),
    cuts=st.lists(st.integers(0, len(HISTORY)), max_size=8),
    resent=st.lists(st.sampled_from(HISTORY), max_size=8),
    at=st.lists(st.integers(0, len(HISTORY)), max_size=8),
)
def test_any_order_any_batches_any_duplication_converge_to_the_folded_state(
    order: list[m.RegistryEvent], cuts: list[int], resent: list[m.RegistryEvent], at: list[int]
) -> None:
    arrival = list(order)
    for event, position in zip(resent, at, strict=False):
        arrival.insert(position, event)
    state, applied = merge_in_batches(CitizenState(PIN), split(arrival, cuts))
    assert_same_state(state, CitizenState.from_events(PIN, HISTORY))
    # `version` is the set's size once each event is in: 1, 2, … n, each once.
    assert [a.version for a in applied] == list(range(1, len(HISTORY) + 1))
    assert applied[-1].snapshot == state.current()


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(HISTORY), cuts=st.lists(st.integers(0, len(HISTORY)), max_size=8))
def test_each_conflict_is_surfaced_once_and_resolved_once(
    order: list[m.RegistryEvent], cuts: list[int]
) -> None:
    state, applied = merge_in_batches(CitizenState(PIN), split(order, cuts))
    open_: dict[str, Conflict] = {}
    for outcome in applied:
        assert not outcome.new_conflicts.keys() & open_.keys()  # never surfaced twice
        assert outcome.resolved_conflicts.keys() <= open_.keys()  # only what was open
        open_.update(outcome.new_conflicts)
        for event_id in outcome.resolved_conflicts:
            del open_[event_id]
    assert open_ == dict(state.conflicts)


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(HISTORY[:12]), cut=st.integers(1, 11))
def test_one_event_per_batch_keeps_the_per_event_contract(
    order: list[m.RegistryEvent], cut: int
) -> None:
    """A batch of one event (or events that each come last) gives each update the state of
    the set at its version, whatever the event's place in legal order."""
    state = CitizenState.from_events(PIN, order[:cut])
    for i, event in enumerate(order[cut:], start=cut + 1):
        (outcome,) = apply_events(state, [event])
        reference = CitizenState.from_events(PIN, order[:i])
        assert (outcome.snapshot, outcome.version) == (reference.current(), i)
        assert dict(outcome.state.conflicts) == dict(reference.conflicts)
        state = outcome.state


@settings(max_examples=40, deadline=None)
@given(st.permutations(HISTORY[:16]), st.lists(st.integers(0, 16), max_size=5))
def test_within_the_budget_the_updates_do_not_depend_on_the_batches(
    order: list[m.RegistryEvent], cuts: list[int]
) -> None:
    """A restart cuts the stream into other batches: the updates (and so the history rows
    written from them) must be the same."""
    _, one_by_one = merge_in_batches(CitizenState(PIN), [[event] for event in order])
    _, batched = merge_in_batches(CitizenState(PIN), split(order, cuts))

    def described(applied: list[Applied]) -> list[tuple[object, ...]]:
        return [
            (
                a.version,
                a.snapshot,
                a.changed_fields,
                dict(a.new_conflicts),
                dict(a.resolved_conflicts),
            )
            for a in applied
        ]

    assert described(batched) == described(one_by_one)


def test_events_landing_among_earlier_ones_past_the_budget_carry_the_final_snapshot_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the budget (a flood), the rest of a batch is folded once: each update keeps its
    own version, all carry the batch's final snapshot, and the last one says what the batch
    changed."""
    monkeypatch.setattr(merge, "EXACT_REFOLD_BUDGET", 0)
    earlier = CitizenState.from_events(PIN, HISTORY[:9])  # the story, up to the death's move
    in_order = story_move(200, date(2025, 1, 1), "26799")  # comes last: exact
    older = [story_move(201, date(2011, 1, 1), "26781"), story_move(202, date(2012, 1, 1), "26782")]
    outcomes = apply_events(earlier, [in_order, *older])
    assert [o.version for o in outcomes] == [10, 11, 12]
    exact = CitizenState.from_events(PIN, [*HISTORY[:9], in_order])
    assert outcomes[0].snapshot == exact.current()
    final = CitizenState.from_events(PIN, [*HISTORY[:9], in_order, *older])
    assert [o.snapshot for o in outcomes[1:]] == [final.current()] * 2
    assert outcomes[1].changed_fields == ()
    assert outcomes[2].changed_fields == ()  # the move after the death is still a conflict
    assert {k for o in outcomes for k in o.new_conflicts} == {"ev-200"}


class Unreadable(Mapping[str, m.RegistryEvent]):
    """A state's events that may be counted and listed, never read."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids

    def __getitem__(self, event_id: str) -> m.RegistryEvent:
        if event_id in self._ids:
            raise AssertionError(f"earlier event {event_id} was read")
        raise KeyError(event_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def test_a_long_history_is_refolded_from_its_index_without_reading_its_events() -> None:
    indexed = CitizenState.from_events(PIN, HISTORY[1:])
    assert indexed.ordered is not None  # INDEXED_FROM events or more: kept
    sealed = replace(indexed, events=Unreadable([e.event_id for e in HISTORY[1:]]))
    (outcome,) = apply_events(sealed, [HISTORY[0]])  # the birth: lands first
    reference = CitizenState.from_events(PIN, HISTORY)
    assert outcome.snapshot == reference.current()
    assert dict(outcome.state.conflicts) == dict(reference.conflicts)
    assert outcome.state.ordered is not None and len(outcome.state.ordered) == len(HISTORY)


def test_a_short_history_keeps_no_index() -> None:
    assert CitizenState.from_events(PIN, story()).ordered is None
