"""One in-memory fake per port, and what the contract suite sees of a port.

Each fake keeps the contract of the real adapter (named in its docstring; the contract suite
in tests/integration/contract runs the same tests against both) and lets a test see what was
asked of it; none of them lives in production code (tests/unit/test_tests_layout.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from popsync.adapters.postgres.sync_state import StoredState
from popsync.contract import models as m
from popsync.domain.aliases import Alias
from popsync.domain.allocation import AllocationRequest, pin_for
from popsync.identity import CandidateCitizen, MatchOutcome
from popsync.identity.decisions import BlockingQuery, Decision, MatchingStore, Review
from popsync.runtime.messages import OutboundMessage
from popsync.runtime.ports import Producer
from popsync.runtime.processing import BatchProcessor, Step
from popsync.runtime.quarantine import Quarantine
from popsync.settings import Settings, WorkerName


class RecordingProducer:
    """`popsync.runtime.ports.Producer` in memory: keeps what was sent.

    `fail_next(n)` makes the next `n` calls of `send_all` raise (a broker fault by default)
    without keeping any of their messages, as a producer whose delivery was not confirmed.
    """

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []
        self.calls = 0  # of send_all, failed ones included
        self.closed = False
        self._failures = 0
        self._error: BaseException | None = None

    def fail_next(self, calls: int = 1, error: BaseException | None = None) -> None:
        """The next `calls` sends raise `error` (default: ConnectionError, which the runtime
        retries as an infrastructure fault)."""
        self._failures = calls
        self._error = error

    async def send_all(self, messages: Sequence[OutboundMessage]) -> None:
        self.calls += 1
        if self._failures > 0:
            self._failures -= 1
            raise self._error or ConnectionError("the broker went away")
        self.sent.extend(messages)

    def close(self) -> None:
        self.closed = True


class InMemoryPinAllocator:
    """`popsync.domain.allocation.PinAllocator` in memory, as the PostgreSQL allocator
    (`popsync.adapters.postgres.pins`): serials from 1 per prefix, one PIN per event id."""

    def __init__(self) -> None:
        self._by_event: dict[str, str] = {}
        self._next: dict[str, int] = {}

    async def allocate(self, requests: Sequence[AllocationRequest]) -> Mapping[str, str]:
        for request in requests:
            if request.event_id not in self._by_event:
                serial = self._next.get(request.prefix, 0) + 1
                self._next[request.prefix] = serial
                self._by_event[request.event_id] = pin_for(request.prefix, serial)
        return {r.event_id: self._by_event[r.event_id] for r in requests}


class InMemoryAliasDirectory:
    """`popsync.domain.aliases.AliasDirectory` in memory, as the PostgreSQL directory:
    `pins` maps each alias to its citizen's PIN; the first registration wins."""

    def __init__(self) -> None:
        self.pins: dict[str, str] = {}

    async def resolve(self, identifiers: Sequence[str]) -> Mapping[str, str]:
        return {i: self.pins[i] for i in identifiers if i in self.pins}

    async def register(self, aliases: Sequence[Alias]) -> Mapping[str, str]:
        for alias in aliases:
            self.pins.setdefault(alias.alias, alias.pin)
        return {a.alias: self.pins[a.alias] for a in aliases}


class InMemoryMatchingStore:
    """`popsync.identity.decisions.MatchingStore` in memory, as the PostgreSQL store
    (`popsync.adapters.postgres.matching`); `queries` lists the blocking queries asked."""

    def __init__(self, citizens: Iterable[CandidateCitizen] = ()) -> None:
        self.citizens: dict[str, CandidateCitizen] = {c.pin: c for c in citizens}
        self.stored: dict[str, Decision] = {}
        self.reviews: dict[str, Review] = {}
        self.queries: list[BlockingQuery] = []

    async def decisions(self, event_ids: Sequence[str]) -> Mapping[str, Decision]:
        return {e: self.stored[e] for e in event_ids if e in self.stored}

    async def candidates(self, query: BlockingQuery) -> Sequence[CandidateCitizen]:
        self.queries.append(query)
        return [
            c
            for c in self.citizens.values()
            if c.birth_date in query.birth_dates or set(c.aliases) & query.legacy_ids
        ]

    async def record(
        self, decisions: Sequence[Decision], reviews: Sequence[Review]
    ) -> Mapping[str, Decision]:
        for decision in decisions:
            self.stored.setdefault(decision.event_id, decision)
        for review in reviews:
            stored = self.stored.get(review.event_id)
            if stored is not None and stored.outcome is MatchOutcome.REVIEW:
                self.reviews.setdefault(review.review_id, review)
        return {d.event_id: self.stored[d.event_id] for d in decisions}


class InMemorySyncStates:
    """`popsync.adapters.postgres.sync_state.SyncStateStore` in memory: a state only moves forward
    in version, and the events of a version the caller holds are not sent back; the store's
    rows saved with the states are kept as the store keeps them (a (pin, version) once, a
    conflict's newest record).

    Counts the calls (`loads`, `saves`) and the events it sends back (`events_sent`);
    `fail_next_save` makes the next save raise, storing nothing.
    """

    def __init__(self) -> None:
        self.rows: dict[str, StoredState] = {}
        self.history: dict[tuple[str, int], m.CitizenUpdate] = {}
        self.conflicts: dict[tuple[str, str], m.MergeConflict] = {}
        self.loads = 0
        self.saves = 0
        self.events_sent = 0
        self.fail_next_save = False

    async def load(self, known: Mapping[str, int | None]) -> dict[str, StoredState]:
        self.loads += 1
        found: dict[str, StoredState] = {}
        for pin, held in known.items():
            if pin in self.rows:
                row = self.rows[pin]
                same = held == row.version
                found[pin] = StoredState(row.version, None) if same else row
                self.events_sent += 0 if same else len(row.events or [])
        return found

    async def save(
        self,
        states: Mapping[str, StoredState],
        records: Sequence[m.CitizenUpdate | m.MergeConflict] = (),
    ) -> None:
        self.saves += 1
        if self.fail_next_save:
            self.fail_next_save = False
            raise ConnectionError("store went away")
        for pin, state in states.items():
            if pin not in self.rows or self.rows[pin].version < state.version:
                self.rows[pin] = state
        for record in records:
            if isinstance(record, m.CitizenUpdate):
                self.history.setdefault((record.pin, record.version), record)
            else:
                self.conflicts[(record.pin, record.event_id)] = record

    def events(self, pin: str) -> list[bytes]:
        return list(self.rows[pin].events or [])


class FakePrometheus:
    """`popsync.dev.metrics_plot.RangeQuerier`: answers every range query with one series,
    of the validator, rising by 10 a second, then a NaN (no data in the window)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        self.queries.append(promql)
        values = [[start + i, str(i * 10.0)] for i in range(5)] + [[start + 5, "NaN"]]
        return [{"metric": {"worker": "validator"}, "values": values}]


# --------------------------------------------------------------------------------------------
# What the contract suite (tests/integration/contract) sees of a port's fake or real adapter


@dataclass(frozen=True)
class Delivered:
    """A message as a consumer of its topic gets it: header values are bytes on the wire
    (a `str` value is sent UTF-8 encoded), and no headers read back as none."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]

    @classmethod
    def of(cls, message: OutboundMessage) -> Delivered:
        headers = tuple(
            (name, value.encode() if isinstance(value, str) else value)
            for name, value in message.headers
        )
        return cls(message.key, message.value, headers)


@dataclass
class ProducerUnderTest:
    """`producer` and `delivered(topic)`: every message on `topic`, each partition's in order
    (the fake has one order for all). `topics`: two topics that exist."""

    producer: Producer
    topics: tuple[str, str]
    delivered: Callable[[str], list[Delivered]]

    def expected(self, messages: Sequence[OutboundMessage], topic: str) -> list[Delivered]:
        return [Delivered.of(m) for m in messages if m.topic == topic]


@dataclass
class MatchingUnderTest:
    """`store`; `seed(citizens)` puts citizens (and their aliases) where the store finds its
    candidates; `reviews()` the reviews it keeps, by review id."""

    store: MatchingStore
    seed: Callable[[Sequence[CandidateCitizen]], None]
    reviews: Callable[[], dict[str, Review]]


def processing(
    step: Step, worker: WorkerName, settings: Settings | None = None
) -> tuple[BatchProcessor, RecordingProducer]:
    """`step` behind the runtime's error path, as its worker runs it, sending to a fake."""
    producer = RecordingProducer()
    return BatchProcessor.for_worker(settings or Settings(), worker, step, producer), producer


class InMemoryQuarantineStore:
    """`popsync.runtime.quarantine.QuarantineStore` in memory; `release` as an operator."""

    def __init__(self) -> None:
        self.decisions: dict[str, Quarantine] = {}
        self.released: set[str] = set()
        self.reads = 0

    async def active(self) -> set[str]:
        self.reads += 1
        return set(self.decisions) - self.released

    async def quarantine(self, decisions: Sequence[Quarantine]) -> None:
        for decision in decisions:
            if decision.source not in self.decisions or decision.source in self.released:
                self.decisions[decision.source] = decision
                self.released.discard(decision.source)

    def release(self, source: str) -> None:
        self.released.add(source)
