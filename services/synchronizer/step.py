"""Synchronizer: applies validated events to each citizen's state, writes the central store
and emits the citizen updates.

One batch, in this order (each part idempotent, so a crash anywhere only repeats work):
1. load the touched citizens' states from PostgreSQL: their accepted events and what
   those fold to (only their versions when the in-memory cache holds those versions,
   see `states`);
2. merge each citizen's events of the batch together (`popsync.domain.merge.apply_events`):
   an update per applied event, a conflict record per newly surfaced conflict, nothing for
   a duplicate; an event beyond the citizen's daily cap is rejected (CITIZEN_DAILY_LIMIT,
   dead-lettered by the runtime, replayable the next day) and counts nothing;
3. the runtime sends updates and conflicts to their topics (for whoever follows the
   register) and waits until the broker has them all;
4. `finish`: in one transaction, save the new states, events and fold (a state only moves
   forward in version) and the central store's rows of those updates and conflicts
   (`popsync.adapters.postgres.citizens`: citizens, citizen_history, citizen_conflicts);
   then cache the states;
5. the runtime commits the consumed offsets.
A crash between 3 and 4 re-emits the same updates with the same versions on restart, and
writes the store then; a crash between 4 and 5 re-delivers events the states already
hold: duplicates, which emit and write nothing. So the store receives each applied event
once, and the topic at least once, with a version that tells repeats apart. The daily count
is saved with the state, so a retry counts the same events again from the same stored count.
Writing the store here, not in a worker of its own reading the updates back, saves an
encode-decode of every update and a hop (bench/README.md, issue 27).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Protocol

from popsync.adapters.postgres.citizens import StoreRecord
from popsync.adapters.postgres.sync_state import StoredState
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.domain.merge import (
    Applied,
    CitizenState,
    Conflict,
    Duplicate,
    apply_events,
    repeat_outcome,
)
from popsync.runtime import metrics, observability
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.runtime.processing import Rejected, StepResult
from popsync.runtime.sources import UNIDENTIFIED, UNVERIFIED
from popsync.settings import ProcessingSettings, TopicSettings
from popsync.trust.signing import VERIFIED_KEY_HEADER, VERIFIED_PUBLISHER_HEADER, header

from .states import Known, StateCache, restored, to_store

log = logging.getLogger(__name__)
STAGE = "synchronizer"
EVENT_CODEC = Codec(m.RegistryEvent)
UPDATE_CODEC = Codec(m.CitizenUpdate)
CONFLICT_CODEC = Codec(m.MergeConflict)
DAILY_LIMIT = "CITIZEN_DAILY_LIMIT"

# A decoded message: its position in the batch, the message, its event.
Decoded = tuple[int, InboundMessage, m.RegistryEvent]


@dataclass
class BatchResult:
    """What one batch produced; counted in metrics only once it is durable."""

    outputs: list[OutboundMessage] = field(default_factory=list)
    rejected: dict[int, Rejected] = field(default_factory=dict)  # by position in the batch
    sources: list[str] = field(default_factory=list)  # of each message, in order
    records: list[StoreRecord] = field(default_factory=list)  # in order
    applied: list[m.RegistryEvent] = field(default_factory=list)
    conflict_codes: list[str] = field(default_factory=list)
    duplicates: int = 0
    changed: set[str] = field(default_factory=set)  # PINs whose state this batch advanced


@dataclass(frozen=True)
class Merged:
    """A batch merged into the citizens' states; nothing of it is saved yet."""

    result: BatchResult
    states: dict[str, Known]

    def changed_states(self) -> dict[str, StoredState]:
        """The rows that persist the states this batch advanced."""
        return {pin: to_store(self.states[pin]) for pin in self.result.changed}


class SyncStates(Protocol):
    """Each citizen's accepted events (`popsync.adapters.postgres.sync_state`), saved with
    the central store's rows of what they merged to."""

    async def load(self, known: Mapping[str, int | None]) -> dict[str, StoredState]: ...

    async def save(
        self, states: Mapping[str, StoredState], records: Sequence[StoreRecord] = ()
    ) -> None: ...


class SynchronizerStep:
    def __init__(
        self,
        topics: TopicSettings,
        processing: ProcessingSettings,
        states: SyncStates,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        capped: bool = True,
    ) -> None:
        self._topics = topics
        self._states = states
        self._clock = clock
        self._cache = StateCache(processing.state_cache_citizens)
        # A backfill applies a registry's archive, years of a citizen's events at once: the
        # daily cap (a defence of the live stream) neither applies to it nor counts them.
        self._daily_cap = processing.citizen_events_per_day if capped else None

    async def __call__(self, batch: Sequence[InboundMessage]) -> StepResult:
        decoded, result = self._decode(batch)
        merged = await self.merge_batch(decoded, result)
        result.outputs.extend(self._message(record) for record in result.records)

        async def save() -> None:  # once the updates are out: see the module doc
            await self._states.save(merged.changed_states(), result.records)
            committed = datetime.now(UTC)  # a measurement: the wall clock, not the rules'
            self.remember(merged)  # only once saved: the cache mirrors the store
            self.count(result)
            observability.observe_event_to_store(result.records, committed)

        return StepResult(
            outputs=result.outputs, rejected=result.rejected, sources=result.sources, finish=save
        )

    async def merge_batch(self, decoded: Sequence[Decoded], result: BatchResult) -> Merged:
        """Load the touched citizens' states and merge the batch's events into them."""
        states = await self._load({event.subject_pin or "" for _, _, event in decoded})
        self.merge(decoded, states, result)
        return Merged(result, states)

    def remember(self, merged: Merged) -> None:
        """Cache the merged states; only once they are saved (the cache mirrors the store)."""
        for pin, known in merged.states.items():
            self._cache.put(pin, known.compact(EVENT_CODEC.decode))

    async def _load(self, pins: set[str]) -> dict[str, Known]:
        """Each citizen's current state: from the cache when the store holds that version."""
        stored = await self._states.load({pin: self._cache.version(pin) for pin in pins})
        states: dict[str, Known] = {}
        for pin in pins:
            entry = stored.get(pin)
            if entry is None:
                states[pin] = Known(CitizenState(pin), {})
            elif entry.events is not None:
                states[pin] = _restore(pin, entry)
            elif (cached := self._cache.get(pin, entry.version)) is not None:
                states[pin] = cached
        missing = pins - states.keys()  # evicted meanwhile: ask for the events themselves
        if missing:
            again = await self._states.load(dict.fromkeys(missing))
            states.update((pin, _restore(pin, again[pin])) for pin in missing)
        return states

    def _decode(self, batch: Sequence[InboundMessage]) -> tuple[list[Decoded], BatchResult]:
        result = BatchResult()
        decoded: list[Decoded] = []
        for i, message in enumerate(batch):
            try:
                event = EVENT_CODEC.decode(message.value)
            except DecodeError as exc:
                # Only a validator bug or a foreign producer gets here; park it.
                result.rejected[i] = Rejected(exc.reason, str(exc))
                result.sources.append(UNIDENTIFIED)
                continue
            # Judged by the publisher the validator verified, as the validator judges it.
            result.sources.append(signer_of(message)[0] or UNVERIFIED)
            if event.subject_pin is None or message.key != event.subject_pin.encode():
                result.rejected[i] = Rejected("KEY_PIN_MISMATCH", "validated event keyed wrongly")
                continue
            decoded.append((i, message, event))
        return decoded, result

    def merge(
        self, decoded: Sequence[Decoded], states: dict[str, Known], result: BatchResult
    ) -> None:
        """Apply the batch's events to the citizens' current states: each citizen's new
        events together, in arrival order, within its daily cap."""
        now = self._clock()
        today = now.astimezone(UTC).date()
        for pin, admitted in self._admit(decoded, states, today, result, now).items():
            if admitted:
                self._apply(pin, admitted, states, today, result, now)

    def _admit(
        self,
        decoded: Sequence[Decoded],
        states: Mapping[str, Known],
        today: date,
        result: BatchResult,
        now: datetime,
    ) -> dict[str, list[Decoded]]:
        """Each citizen's new events that may be applied, in arrival order: re-sends are
        skipped, reused ids surfaced as conflicts, events beyond the cap rejected."""
        admitted: dict[str, list[Decoded]] = {}
        cap = self._daily_cap
        for item in decoded:
            i, _, event = item
            pin = event.subject_pin or ""
            known, pending = states[pin], admitted.setdefault(pin, [])
            repeat = repeat_outcome(known.state, event, {e.event_id: e for _, _, e in pending})
            if isinstance(repeat, Duplicate):
                result.duplicates += 1
            elif repeat is not None:
                result.records.append(self._conflict(event, repeat.conflict, now))
                result.conflict_codes.append(repeat.conflict.code)
            elif cap is not None and known.applied_on(today) + len(pending) >= cap:
                why = f"the citizen had {self._daily_cap} events applied today (UTC)"
                result.rejected[i] = Rejected(DAILY_LIMIT, why, event)
            else:
                pending.append(item)
        return admitted

    def _apply(
        self,
        pin: str,
        admitted: Sequence[Decoded],
        states: dict[str, Known],
        today: date,
        result: BatchResult,
        now: datetime,
    ) -> None:
        known = states[pin]
        outcomes = apply_events(known.state, [event for _, _, event in admitted])
        raw = dict(known.raw)  # the cached dict must stay as stored until the save
        for (_, message, event), outcome in zip(admitted, outcomes, strict=True):
            raw[event.event_id] = message.value or b""
            result.applied.append(event)
            result.records.append(self._update(event, outcome, now, signer_of(message)))
            for event_id, conflict in outcome.new_conflicts.items():
                conflicting = outcome.state.events[event_id]
                result.records.append(self._conflict(conflicting, conflict, now))
                result.conflict_codes.append(conflict.code)
            for event_id, conflict in outcome.resolved_conflicts.items():
                resolved = outcome.state.events[event_id]
                result.records.append(self._conflict(resolved, conflict, now, resolved=True))
        counted = len(admitted) if self._daily_cap is not None else 0
        count = known.applied_on(today) + counted
        states[pin] = Known(outcomes[-1].state, raw, today, count)
        result.changed.add(pin)

    def _update(
        self,
        event: m.RegistryEvent,
        outcome: Applied,
        now: datetime,
        signer: tuple[str | None, str | None] = (None, None),
    ) -> m.CitizenUpdate:
        return m.CitizenUpdate(
            pin=outcome.snapshot.pin,
            version=outcome.version,
            snapshot=outcome.snapshot,
            changed_fields=list(outcome.changed_fields),
            event_id=event.event_id,
            event_type=event.event_type,
            source_registry=event.source_registry,
            occurred_at=event.occurred_at,
            applied_at=now,
            recorded_at=event.recorded_at,
            publisher_id=signer[0],
            key_id=signer[1],
        )

    def _conflict(
        self, event: m.RegistryEvent, conflict: Conflict, now: datetime, resolved: bool = False
    ) -> m.MergeConflict:
        return m.MergeConflict(
            pin=event.subject_pin or "",
            event_id=event.event_id,
            event_type=event.event_type,
            source_registry=event.source_registry,
            conflict_code=conflict.code,
            message=conflict.message,
            resolved=resolved,
            occurred_at=event.occurred_at,
            detected_at=now,
        )

    def _message(self, record: m.CitizenUpdate | m.MergeConflict) -> OutboundMessage:
        """An update or conflict as the stream carries it, keyed by the citizen's PIN."""
        if isinstance(record, m.CitizenUpdate):
            value = UPDATE_CODEC.encode(record)
            return OutboundMessage(self._topics.citizen_updates, record.pin.encode(), value)
        value = CONFLICT_CODEC.encode(record)
        return OutboundMessage(self._topics.conflicts, record.pin.encode(), value)

    def count(self, result: BatchResult) -> None:
        """Count a durable batch in the metrics."""
        conflicts = len(result.records) - len(result.applied)
        metrics.STORE_ROWS_WRITTEN.labels("citizen_history").inc(len(result.applied))
        metrics.STORE_ROWS_WRITTEN.labels("citizen_conflicts").inc(conflicts)
        for event in result.applied:
            metrics.UPDATES_APPLIED.labels(
                event.event_type.value, event.source_registry.value
            ).inc()
        for code in result.conflict_codes:
            metrics.CONFLICTS.labels(code).inc()
        metrics.DUPLICATES_SKIPPED.labels(STAGE).inc(result.duplicates)


def signer_of(message: InboundMessage) -> tuple[str | None, str | None]:
    """The publisher and key id the validator verified for a validated event (its headers),
    carried on in the update so that the store's history names who changed the citizen."""
    publisher = header(message.headers, VERIFIED_PUBLISHER_HEADER)
    key_id = header(message.headers, VERIFIED_KEY_HEADER)
    return (
        publisher.decode() if publisher is not None else None,
        key_id.decode() if key_id is not None else None,
    )


def _restore(pin: str, stored: StoredState) -> Known:
    """A citizen's state from its stored row: its persisted fold, or else its events."""
    return restored(pin, stored, EVENT_CODEC.decode) or _rebuild(pin, stored)


def _rebuild(pin: str, stored: StoredState) -> Known:
    """A citizen's state folded from its stored events (validated bytes, so they decode)."""
    values = stored.events or []
    events = [EVENT_CODEC.decode(value) for value in values]
    raw = {event.event_id: value for event, value in zip(events, values, strict=True)}
    return Known(CitizenState.from_events(pin, events), raw, stored.day, stored.applied_today)
