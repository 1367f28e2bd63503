"""Merge rules: how a citizen's validated events become one current snapshot.

The state of a citizen is the *set* of its accepted events; the snapshot is a
deterministic fold of that set in legal order (occurred_at, then recorded_at,
source sequence and event id as tie-breaks). So:

- later event time wins within an authority, whatever the arrival order;
- a duplicate (same event id, same content) is a no-op;
- any permutation or duplication of the same events converges to one state;
- an event that contradicts the state at its legal time (e.g. a move dated
  after the death) is a conflict: it is kept in the set, never applied, and
  surfaced once, even if the contradicting event only arrives later;
- a conflict that only existed because of arrival order (a divorce that came
  before its marriage) is resolved, and reported so, when the missing event
  arrives.

`version` is the number of distinct events in the set, so it strictly increases
with every new event and is the same for every arrival order.

Cost: an event that comes last in legal order (the usual case) is folded onto the current
snapshot alone. Events that land among earlier ones are applied together (`apply_events`):
the set is folded once for all of them, from the state's legal-order index of decoded
events (`CitizenState.ordered`), so a citizen's events arriving in reverse cost one fold
per batch, not one per event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from popsync.contract import models as m
from popsync.domain.authority import FIELD_AUTHORITY
from popsync.domain.legal_time import legal_date

# Citizens with at least this many events keep their legal-order index once built: below it,
# decoding the set again for a refold costs less than the decoded events kept in the cache.
INDEXED_FROM = 64

# Persisted folds are tagged with this, and trusted only while it is unchanged: bump it with
# any change to these rules that could fold a set of events differently (a snapshot field,
# a conflict, the order). A stored fold of another version is folded again from its events.
FOLD_RULES_VERSION = 1


@dataclass(frozen=True)
class Conflict:
    """Why an event was not applied; `code` is machine-readable, `message` has no personal data."""

    code: str
    message: str


OrderKey = tuple[datetime, datetime, int, str]


@dataclass(frozen=True)
class CitizenState:
    """Everything the synchronizer keeps about one citizen.

    `events` may be any mapping, e.g. one that decodes stored bytes on access: merging an
    event that simply comes last reads none of it (see `apply_event`). `last_order` and
    `registered_birth` summarise the set for that. `ordered`, when held, is the set's
    events decoded in legal order: a refold then reads neither `events` nor any bytes.
    It is derived (not compared, not persisted), and held by citizens of `INDEXED_FROM`
    events or more once a fold built it, so that a long history whose events keep landing
    among earlier ones is decoded once, not per batch.
    """

    pin: str
    events: Mapping[str, m.RegistryEvent] = field(default_factory=dict)
    snapshot: m.CitizenSnapshot | None = None
    conflicts: Mapping[str, Conflict] = field(default_factory=dict)
    last_order: OrderKey | None = None  # legal order of the set's last event
    registered_birth: date | None = None  # of the set's first birth, applied or not
    ordered: tuple[m.RegistryEvent, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def version(self) -> int:
        return len(self.events)

    def current(self) -> m.CitizenSnapshot:
        return self.snapshot or m.CitizenSnapshot(pin=self.pin)

    @classmethod
    def from_events(cls, pin: str, events: Iterable[m.RegistryEvent]) -> CitizenState:
        """A state folded from its events: what every other form of the state must equal."""
        unique = {event.event_id: event for event in events}
        return _folded(pin, unique, sorted(unique.values(), key=legal_order))


def _folded(
    pin: str, events: Mapping[str, m.RegistryEvent], ordered: list[m.RegistryEvent]
) -> CitizenState:
    """The state of the set `events`, whose values `ordered` lists in legal order."""
    registered_birth = _registered_birth(ordered)
    snapshot, conflicts = _fold_ordered(pin, ordered, registered_birth)
    return CitizenState(
        pin=pin,
        events=events,
        snapshot=snapshot if ordered else None,
        conflicts=conflicts,
        last_order=legal_order(ordered[-1]) if ordered else None,
        registered_birth=registered_birth,
        ordered=tuple(ordered) if len(ordered) >= INDEXED_FROM else None,
    )


@dataclass(frozen=True)
class Applied:
    """The event entered the citizen's set; `update` describes the new state."""

    state: CitizenState
    version: int
    snapshot: m.CitizenSnapshot
    changed_fields: tuple[str, ...]
    new_conflicts: Mapping[str, Conflict]
    resolved_conflicts: Mapping[str, Conflict]


@dataclass(frozen=True)
class Duplicate:
    """Same event id and same content as an event already applied: nothing to do."""


@dataclass(frozen=True)
class Rejected:
    """The event cannot enter the set (same id, different content)."""

    conflict: Conflict


Outcome = Applied | Duplicate | Rejected


def content_digest(event: m.RegistryEvent) -> str:
    """Identity of an event's content, to tell a re-send from a reused event id."""
    return hashlib.sha256(event.model_dump_json().encode()).hexdigest()


def legal_order(event: m.RegistryEvent) -> OrderKey:
    return (event.occurred_at, event.recorded_at, event.source_sequence, event.event_id)


def apply_event(state: CitizenState, event: m.RegistryEvent) -> Outcome:
    """Add one validated event to a citizen's state."""
    return repeat_outcome(state, event) or apply_events(state, [event])[0]


def repeat_outcome(
    state: CitizenState,
    event: m.RegistryEvent,
    pending: Mapping[str, m.RegistryEvent] | None = None,
) -> Duplicate | Rejected | None:
    """What `event` is if its id is in the set or among `pending` (events about to be added
    with it): a re-send, or a reused id; None for a new event."""
    known = (pending or {}).get(event.event_id) or state.events.get(event.event_id)
    if known is None:
        return None
    # Digests only on an id collision: hashing every stored event was a hot spot.
    if content_digest(known) == content_digest(event):
        return Duplicate()
    return Rejected(
        Conflict("DUPLICATE_EVENT_ID_DIFFERENT_CONTENT", "event id reused with other content")
    )


# An out-of-order event refolds the citizen's set: O(history). Each refold keeps its update
# exact (the fold of the set at its version), so the updates and the history they write
# depend on arrival order only, not on how the stream was cut into batches (a restart cuts
# it elsewhere). Past this many event folds for one citizen in one batch, the rest of its
# batch is folded together, once: a flood costs O(history) per batch, not per event.
EXACT_REFOLD_BUDGET = 2_048


def apply_events(state: CitizenState, events: Sequence[m.RegistryEvent]) -> list[Applied]:
    """Add new events (`repeat_outcome` None for each, distinct ids) in arrival order: one
    `Applied` per event, the last one's `state` the state after all of them.

    Each event is exact — its `Applied` is the state of the set at its version — when it
    comes last in legal order (folded onto the snapshot before it), or when refolding the set
    for it stays within `EXACT_REFOLD_BUDGET` event folds for this batch. From the first one
    beyond that, the rest are folded together with the set, once (`_refolded`).
    """
    applied: list[Applied] = []
    budget = EXACT_REFOLD_BUDGET
    for i, event in enumerate(events):
        if _comes_last(state, event):
            outcome = _append(state, event)
        elif state.version < budget:
            budget -= state.version + 1
            outcome = _refolded(state, [event])[-1]
        else:
            return [*applied, *_refolded(state, events[i:])]
        applied.append(outcome)
        state = outcome.state
    return applied


def _refolded(state: CitizenState, added: Sequence[m.RegistryEvent]) -> list[Applied]:
    """`added` and the set folded once: each event's `Applied` has its own version (the set's
    size once it is in) and the final snapshot; the last one carries what all of them
    changed, and the conflicts they surfaced and resolved (each exactly once)."""
    earlier = state.ordered
    if earlier is None:  # decoded, once if the new state keeps the index (INDEXED_FROM)
        earlier = tuple(sorted(state.events.values(), key=legal_order))
    # Timsort takes the index as one sorted run: O(n + k log k) for k added events.
    ordered = sorted([*earlier, *added], key=legal_order)
    new_state = _folded(state.pin, _with_events(state.events, added), ordered)
    snapshot, conflicts = new_state.current(), new_state.conflicts
    last = Applied(
        state=new_state,
        version=new_state.version,
        snapshot=snapshot,
        changed_fields=changed_fields(state.current(), snapshot),
        new_conflicts={k: v for k, v in conflicts.items() if k not in state.conflicts},
        resolved_conflicts={k: v for k, v in state.conflicts.items() if k not in conflicts},
    )
    nothing: dict[str, Conflict] = {}
    carried = [
        replace(
            last,
            version=state.version + i,
            changed_fields=(),
            new_conflicts=nothing,
            resolved_conflicts=nothing,
        )
        for i in range(1, len(added))
    ]
    return [*carried, last]


# Events whose arrival can change how earlier events fold: a birth bounds them, a death
# may be one an earlier annulment names, an annulment voids a death.
_REACHES_BACK = (m.BirthRegistered, m.DeathRegistered, m.DeathAnnulled)


def _comes_last(state: CitizenState, event: m.RegistryEvent) -> bool:
    """True if folding the set with `event` is folding the set, then `event`."""
    return (
        state.last_order is not None
        and legal_order(event) > state.last_order
        and not isinstance(event.payload, _REACHES_BACK)
    )


def _append(state: CitizenState, event: m.RegistryEvent) -> Applied:
    """`event` folded onto the current snapshot: what a full fold gives, without re-reading
    the earlier events (a backfill's usual case)."""
    before = state.current()
    snapshot, conflict = _fold_one(before, event, state.registered_birth, ())
    new_conflicts = {event.event_id: conflict} if conflict else {}
    new_state = replace(
        state,
        events=_with_events(state.events, [event]),
        snapshot=snapshot,
        conflicts={**state.conflicts, **new_conflicts},
        last_order=legal_order(event),
        ordered=None if state.ordered is None else (*state.ordered, event),
    )
    return Applied(
        state=new_state,
        version=new_state.version,
        snapshot=snapshot,
        changed_fields=changed_fields(before, snapshot),
        new_conflicts=new_conflicts,
        resolved_conflicts={},
    )


class _EventsAdded(Mapping[str, m.RegistryEvent]):
    """A set of events plus some added to it, without reading (or copying) the set's
    events: they may be decoded on demand."""

    def __init__(
        self, earlier: Mapping[str, m.RegistryEvent], added: dict[str, m.RegistryEvent]
    ) -> None:
        self._earlier = earlier
        self._added = added

    def __getitem__(self, event_id: str) -> m.RegistryEvent:
        found = self._added.get(event_id)
        return self._earlier[event_id] if found is None else found

    def __iter__(self) -> Iterator[str]:
        yield from self._earlier
        yield from self._added

    def __len__(self) -> int:
        return len(self._earlier) + len(self._added)  # an added event is never in `earlier`

    def plus(self, events: Iterable[m.RegistryEvent]) -> _EventsAdded:
        return _EventsAdded(self._earlier, {**self._added, **{e.event_id: e for e in events}})


def _with_events(
    events: Mapping[str, m.RegistryEvent], added: Iterable[m.RegistryEvent]
) -> Mapping[str, m.RegistryEvent]:
    if isinstance(events, _EventsAdded):  # flat, however many events a batch adds
        return events.plus(added)
    return _EventsAdded(events, {e.event_id: e for e in added})


def fold(
    pin: str, events: Iterable[m.RegistryEvent]
) -> tuple[m.CitizenSnapshot, dict[str, Conflict]]:
    """The snapshot that a set of events yields, and which of them conflict."""
    ordered = sorted(events, key=legal_order)
    return _fold_ordered(pin, ordered, _registered_birth(ordered))


def _fold_ordered(
    pin: str, ordered: Sequence[m.RegistryEvent], registered_birth: date | None
) -> tuple[m.CitizenSnapshot, dict[str, Conflict]]:
    snapshot = m.CitizenSnapshot(pin=pin)
    conflicts: dict[str, Conflict] = {}
    annulled = _annulled_deaths(ordered)
    deaths = _death_numbers(ordered)  # once per fold: read by every annulment
    for event in ordered:
        if event.event_id in annulled:
            continue  # void from the start: as if it had never been registered
        snapshot, conflict = _fold_one(snapshot, event, registered_birth, deaths)
        if conflict is not None:
            conflicts[event.event_id] = conflict
    return snapshot, conflicts


def _fold_one(
    snapshot: m.CitizenSnapshot,
    event: m.RegistryEvent,
    registered_birth: date | None,
    deaths: Collection[str],
) -> tuple[m.CitizenSnapshot, Conflict | None]:
    """One event onto the snapshot of the events before it (`deaths`: the registration
    numbers of the set's deaths, read by an annulment): the next snapshot, or the same one
    and why the event conflicts."""
    conflict = _precondition_failure(snapshot, event, snapshot.birth_date or registered_birth)
    if conflict is None and isinstance(event.payload, m.DeathAnnulled):
        conflict = _annulment_failure(event.payload, deaths)
    if conflict is None:
        changes = _RULES[type(event.payload)](snapshot, event.payload)
        conflict = _authority_failure(event, changes)
        if conflict is None:
            return snapshot.model_copy(update=changes), None
    return snapshot, conflict


def _registered_birth(ordered: Sequence[m.RegistryEvent]) -> date | None:
    """A late-registered birth still bounds events that happened before it was recorded."""
    for event in ordered:
        if isinstance(event.payload, m.BirthRegistered):
            return event.payload.birth_date
    return None


def _annulled_deaths(events: Sequence[m.RegistryEvent]) -> set[str]:
    """Ids of the death registrations a court decision in the set annulled."""
    numbers = {
        e.payload.death_registration_number
        for e in events
        if isinstance(e.payload, m.DeathAnnulled)
    }
    return {
        e.event_id
        for e in events
        if isinstance(e.payload, m.DeathRegistered) and e.payload.registration_number in numbers
    }


def _death_numbers(events: Sequence[m.RegistryEvent]) -> set[str]:
    return {
        e.payload.registration_number for e in events if isinstance(e.payload, m.DeathRegistered)
    }


def _annulment_failure(annulment: m.DeathAnnulled, deaths: Collection[str]) -> Conflict | None:
    # Until the annulled registration arrives, the decision has nothing to act on; the
    # conflict resolves itself when it does.
    if annulment.death_registration_number in deaths:
        return None
    return Conflict("NO_DEATH_TO_ANNUL", "no death registration with the annulled number")


def changed_fields(before: m.CitizenSnapshot, after: m.CitizenSnapshot) -> tuple[str, ...]:
    return tuple(
        name
        for name in m.CitizenSnapshot.model_fields
        if getattr(before, name) != getattr(after, name)
    )


def _precondition_failure(
    snapshot: m.CitizenSnapshot, event: m.RegistryEvent, birth_date: date | None
) -> Conflict | None:
    """State-dependent rules that the validator cannot check on one event alone."""
    payload = event.payload
    when = legal_date(event.occurred_at)
    if isinstance(payload, m.BirthRegistered):
        if snapshot.birth_date is not None:
            return Conflict("BIRTH_ALREADY_REGISTERED", "a birth is already registered")
        return None
    if birth_date is not None and when < birth_date:
        return Conflict("EVENT_BEFORE_BIRTH", "event dated before the citizen's birth")
    if snapshot.life_status is m.LifeStatus.DECEASED:
        if isinstance(payload, m.DeathRegistered):
            return Conflict("DEATH_ALREADY_REGISTERED", "a death is already registered")
        # Corrections, and a court annulling the death itself, still apply.
        if not isinstance(payload, m.CivilStatusChanged | m.DeathAnnulled):
            return Conflict("SUBJECT_DECEASED", "event dated after the citizen's death")
    if (
        isinstance(payload, m.DeathRegistered)
        and birth_date is not None
        and (payload.death_date < birth_date)
    ):
        return Conflict("DEATH_BEFORE_BIRTH", "death date before birth date")
    married = snapshot.marital_status is m.MaritalStatus.MARRIED
    if isinstance(payload, m.MarriageRegistered) and married:
        return Conflict("ALREADY_MARRIED", "marriage registered while married")
    if isinstance(payload, m.DivorceRecorded) and not married:
        return Conflict("NOT_MARRIED", "divorce recorded while not married")
    return None


def _authority_failure(event: m.RegistryEvent, changes: Mapping[str, Any]) -> Conflict | None:
    foreign = sorted(f for f in changes if FIELD_AUTHORITY[f] is not event.source_registry)
    if foreign:
        return Conflict("NOT_AUTHORITATIVE", f"source may not set {', '.join(foreign)}")
    return None


Changes = dict[str, Any]


def _birth(snapshot: m.CitizenSnapshot, p: m.BirthRegistered) -> Changes:
    marital = m.MaritalStatus.SINGLE if snapshot.marital_status is m.MaritalStatus.UNKNOWN else None
    changes: Changes = {
        "full_name": p.full_name,
        "birth_date": p.birth_date,
        "sex": p.sex,
        "ethnicity": p.ethnicity,
        "nationality": p.nationality,
        "birthplace_province": p.birthplace_province,
    }
    if marital is not None:
        changes["marital_status"] = marital
    return changes


def _death(_: m.CitizenSnapshot, p: m.DeathRegistered) -> Changes:
    return {"life_status": m.LifeStatus.DECEASED, "death_date": p.death_date}


def _marriage(_: m.CitizenSnapshot, p: m.MarriageRegistered) -> Changes:
    return {"marital_status": m.MaritalStatus.MARRIED, "spouse_pin": p.spouse_pin}


def _divorce(_: m.CitizenSnapshot, p: m.DivorceRecorded) -> Changes:
    return {"marital_status": m.MaritalStatus.DIVORCED, "spouse_pin": None}


def _civil_status_change(_: m.CitizenSnapshot, p: m.CivilStatusChanged) -> Changes:
    candidates = {
        "full_name": p.new_full_name,
        "ethnicity": p.new_ethnicity,
        "birth_date": p.corrected_birth_date,
        "sex": p.corrected_sex,
    }
    return {name: value for name, value in candidates.items() if value is not None}


def _permanent(_: m.CitizenSnapshot, p: m.PermanentResidenceRegistered) -> Changes:
    return {"permanent_residence": p.address}


def _temporary(_: m.CitizenSnapshot, p: m.TemporaryResidenceRegistered) -> Changes:
    return {"temporary_residence": p.address}


def _deregistered(_: m.CitizenSnapshot, p: m.ResidenceDeregistered) -> Changes:
    if p.residence_kind is m.ResidenceKind.PERMANENT:
        return {"permanent_residence": None}
    return {"temporary_residence": None}


def _id_card(_: m.CitizenSnapshot, p: m.IdCardIssued) -> Changes:
    return {"id_card": p.card}


def _death_annulled(_: m.CitizenSnapshot, __: m.DeathAnnulled) -> Changes:
    return {}  # its effect is that the annulled death is skipped by `fold`


def _sector_record(_: m.CitizenSnapshot, __: m.SectorRecordRegistered) -> Changes:
    return {}  # sector databases own no citizen field: the record joins the set, for the audit


_RULES: Mapping[type[Any], Callable[[m.CitizenSnapshot, Any], Changes]] = {
    m.BirthRegistered: _birth,
    m.DeathRegistered: _death,
    m.DeathAnnulled: _death_annulled,
    m.MarriageRegistered: _marriage,
    m.DivorceRecorded: _divorce,
    m.CivilStatusChanged: _civil_status_change,
    m.PermanentResidenceRegistered: _permanent,
    m.TemporaryResidenceRegistered: _temporary,
    m.ResidenceDeregistered: _deregistered,
    m.IdCardIssued: _id_card,
    m.SectorRecordRegistered: _sector_record,
}
