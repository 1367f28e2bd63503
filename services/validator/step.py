"""Validator: decode, check the contract and the domain rules, normalize, route.

Every input message leaves exactly one output: the normalized event on the
validated topic, or a rejection that the runtime dead-letters with its original bytes
and the reason; a
valid sector record without PIN is matched to a citizen first
(`popsync.identity.sector_matching`) and goes on linked to it, or to the review queue,
or is reported unmatched.
An unexpected exception while checking one event dead-letters that event
(reason INTERNAL_ERROR) instead of skipping it or stopping the partition.
Every event must be signed by a publisher of the directory, within its authority
(`popsync.trust.verification`): that is checked right after decoding, before any rule,
and an event that fails is parked with the reason. The source an event is judged by is its
verified publisher. Every message of a quarantined source (`popsync.runtime.quarantine`)
is parked whole as SOURCE_QUARANTINED before any rule, PIN allocation or alias sees it.
A validated event carries its verified publisher and key id as headers to the
synchronizer, which passes them on to the store's history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.domain.aliases import AliasDirectory, declared_aliases, subject_reference
from popsync.domain.allocation import (
    PinAllocator,
    allocation_request,
    birth_without_pin,
    provisional_pin,
)
from popsync.domain.rules import RuleViolation, check_event
from popsync.identity.decisions import MatchingStore
from popsync.identity.matching import MatchOutcome
from popsync.identity.sector_matching import SectorMatching, needs_match
from popsync.runtime import metrics, observability
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.runtime.processing import Rejected, StepResult
from popsync.runtime.quarantine import SourceGuard
from popsync.runtime.sources import UNIDENTIFIED, UNVERIFIED
from popsync.settings import Settings
from popsync.topology import MAX_EVENT_BYTES
from popsync.trust.identity import SigningIdentity
from popsync.trust.signing import identity_headers
from popsync.trust.verification import SIGNER_UNKNOWN, EventVerifier, TrustViolation

log = logging.getLogger(__name__)
STAGE = "validator"
EVENT_CODEC = Codec(m.RegistryEvent)
IDENTITY_CODEC = Codec(m.IdentityAssigned)


@dataclass(frozen=True)
class Routed:
    output: OutboundMessage | None  # None: rejected
    rejected: Rejected | None  # None: validated
    event: m.RegistryEvent | None
    needs_pin: bool = False  # a valid birth without a PIN: `output` is completed later
    needs_match: bool = False  # a valid sector record without a PIN: matched later
    match_outcome: MatchOutcome | None = None  # how a sector record without a PIN went

    @property
    def reason(self) -> str | None:
        """The dead-letter reason code; None: validated."""
        return self.rejected.reason if self.rejected else None


@dataclass(frozen=True)
class Judged:
    """A batch's `StepResult`, and its validated events with their messages, in order."""

    result: StepResult
    validated: list[tuple[int, OutboundMessage, m.RegistryEvent]]  # (position in the batch, …)


class ValidatorStep:
    def __init__(
        self,
        settings: Settings,
        allocator: PinAllocator,
        aliases: AliasDirectory,
        matching: MatchingStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        guard: SourceGuard | None = None,
        *,
        verifier: EventVerifier,
    ) -> None:
        self._topics = settings.topics
        self._guard = guard
        self._verifier = verifier
        self._allocator = allocator
        self._aliases = aliases
        self._matching = SectorMatching(settings.topics, settings.matching, matching)
        self._skew = timedelta(seconds=settings.processing.future_skew_seconds)
        self._clock = clock
        self._freshness = observability.Freshness()

    def route(
        self,
        message: InboundMessage,
        now: datetime,
        aliases: Mapping[str, str] | None = None,
        decoded: m.RegistryEvent | DecodeError | None = None,
    ) -> Routed:
        """The one output for one input message; `aliases` resolve legacy identifiers,
        `decoded` is the message's value already decoded (or why it cannot be)."""
        event: m.RegistryEvent | None = None
        needs_pin = False
        try:
            if decoded is None:
                decoded = _decode(message)
            if isinstance(decoded, DecodeError):
                raise decoded
            event = decoded
            checked, key = _resolve_subject(event, message.key, aliases or {})
            birth = birth_without_pin(event)
            if birth is not None:  # checked with a provisional PIN; the serial comes after
                provisional = provisional_pin(event.source_province, birth)
                checked = event.model_copy(update={"subject_pin": provisional})
                key, needs_pin = provisional.encode(), True
            normalized = check_event(checked, key, now, self._skew)
        except (DecodeError, RuleViolation) as exc:
            return _rejected(exc.reason, str(exc), event)
        # Any other exception is a bug: the runtime parks this message as INTERNAL_ERROR.
        output = self._validated(normalized, _unchanged_bytes(message, event, normalized))
        return Routed(output, None, normalized, needs_pin, needs_match(normalized))

    def _validated(self, event: m.RegistryEvent, encoded: bytes | None = None) -> OutboundMessage:
        """The validated event's message; `encoded`: its bytes, when known already."""
        key = event.subject_pin.encode() if event.subject_pin else None
        value = encoded if encoded is not None else EVENT_CODEC.encode(event)
        return OutboundMessage(self._topics.validated_events, key, value)

    async def _allocate_pins(self, routed: list[Routed], now: datetime) -> list[OutboundMessage]:
        """Give each valid birth without a PIN its PIN (re-keyed by it); tell the registry."""
        births = {
            i: (r.event, r.event.payload)
            for i, r in enumerate(routed)
            if r.needs_pin and r.event and isinstance(r.event.payload, m.BirthRegistered)
        }
        if not births:
            return []
        requests = [
            allocation_request(event.event_id, event.source_province, birth)
            for event, birth in births.values()
        ]
        pins = await self._allocator.allocate(requests)
        notices: list[OutboundMessage] = []
        for i, (event, birth) in births.items():
            pin = pins[event.event_id]
            with_pin = event.model_copy(update={"subject_pin": pin})
            routed[i] = Routed(self._validated(with_pin), None, with_pin)
            notice = m.IdentityAssigned(
                pin=pin,
                event_id=event.event_id,
                source_registry=event.source_registry,
                source_province=event.source_province,
                registration_number=birth.registration_number,
                assigned_at=now,
            )
            notices.append(
                OutboundMessage(
                    self._topics.identity_assigned, pin.encode(), IDENTITY_CODEC.encode(notice)
                )
            )
        return notices

    async def _match_records(
        self, batch: Sequence[InboundMessage], routed: list[Routed], now: datetime
    ) -> None:
        """Route each valid sector record without a PIN by the matcher's decision."""
        positions: list[int] = []
        records: list[tuple[InboundMessage, m.RegistryEvent]] = []
        for i, r in enumerate(routed):
            if r.needs_match and r.event is not None:
                positions.append(i)
                records.append((batch[i], r.event))
        results = await self._matching(records, now)
        for i, result in zip(positions, results, strict=True):
            outcome = result.decision.outcome
            routed[i] = Routed(result.output, None, result.event, match_outcome=outcome)

    def _verified(
        self, message: InboundMessage, decoded: m.RegistryEvent | DecodeError, now: datetime
    ) -> SigningIdentity | TrustViolation | None:
        """Who signed a decoded event (None: it did not decode, there is nothing to check)."""
        if not isinstance(decoded, m.RegistryEvent):
            return None
        try:
            return self._verifier.verify(message, decoded, now)
        except TrustViolation as violation:
            return violation

    async def _verify_all(
        self,
        batch: Sequence[InboundMessage],
        decoded: Sequence[m.RegistryEvent | DecodeError],
        now: datetime,
    ) -> list[Trust]:
        """Who signed each message; the directory is read again before any key is refused
        as unknown, so a key added a moment ago is never refused."""
        await self._verifier.refresh()
        trust = [self._verified(msg, d, now) for msg, d in zip(batch, decoded, strict=True)]
        if any(isinstance(t, TrustViolation) and t.reason == SIGNER_UNKNOWN for t in trust):
            await self._verifier.refresh(force=True)
            trust = [self._verified(msg, d, now) for msg, d in zip(batch, decoded, strict=True)]
        return trust

    async def _held(self, sources: Sequence[str]) -> list[bool]:
        """Whether each message's source is quarantined; what is in force is read again
        before anything is held, so a release takes effect at once."""
        if self._guard is None:
            return [False] * len(sources)
        if any(self._guard.is_quarantined(s) for s in sources):
            await self._guard.refresh(force=True)
        return [self._guard.is_quarantined(s) for s in sources]

    async def _route_all(
        self, batch: Sequence[InboundMessage], now: datetime
    ) -> tuple[list[Routed], list[Trust], list[str]]:
        """Route a batch with its aliases resolved, registering the aliases it declares;
        and who signed each message.

        An event naming an alias declared earlier in the same batch is routed again
        once that alias is registered.
        """
        decoded = [_decode(message) for message in batch]
        trust = await self._verify_all(batch, decoded, now)
        sources = [_source(d, t) for d, t in zip(decoded, trust, strict=True)]
        held = await self._held(sources)
        trusted = [
            not h and isinstance(t, SigningIdentity) for t, h in zip(trust, held, strict=True)
        ]
        references = [
            ref
            for d, ok in zip(decoded, trusted, strict=True)
            if ok and isinstance(d, m.RegistryEvent) and (ref := subject_reference(d))
        ]
        aliases = dict(await self._aliases.resolve(references))
        routed = [
            _quarantined(s, d)
            if h
            else _untrusted(t, d)
            if isinstance(t, TrustViolation)
            else self.route(msg, now, aliases, d)
            for msg, d, s, h, t in zip(batch, decoded, sources, held, trust, strict=True)
        ]
        declared = [
            a for r in routed if r.rejected is None and r.event for a in declared_aliases(r.event)
        ]
        if not declared:
            return routed, trust, sources
        stored = await self._aliases.register(declared)
        taken = {a.event_id for a in declared if stored[a.alias] != a.pin}
        aliases.update(stored)
        for i, (message, r) in enumerate(zip(batch, routed, strict=True)):
            if r.event is not None and r.event.event_id in taken:
                text = "a declared alias already names another citizen"
                routed[i] = _rejected("ALIAS_TAKEN", text, r.event)
            elif r.reason == "ALIAS_UNKNOWN":
                routed[i] = self.route(message, now, aliases, decoded[i])
        return routed, trust, sources

    async def __call__(self, batch: Sequence[InboundMessage]) -> StepResult:
        return (await self.judge(batch)).result

    async def judge(self, batch: Sequence[InboundMessage]) -> Judged:
        """The step's result, with each validated event beside its message (a backfill
        merges them at once, without reading the message back)."""
        now = self._clock()
        routed, trust, sources = await self._route_all(batch, now)
        notices = await self._allocate_pins(routed, now)
        await self._match_records(batch, routed, now)
        # PIN allocation and matching only store idempotent decisions: a retried or
        # re-delivered batch gets the same PINs and matches.
        outputs = []
        for r, signed in zip(routed, trust, strict=True):
            if r.output is None:
                continue
            if isinstance(signed, SigningIdentity):
                r.output.headers.extend(identity_headers(signed))
            outputs.append(r.output)

        async def count() -> None:  # once delivered, so a retried batch counts once
            self._count(routed)

        result = StepResult(
            outputs=outputs + notices,
            rejected={i: r.rejected for i, r in enumerate(routed) if r.rejected is not None},
            sources=sources,
            finish=count,
        )
        passed = self._topics.validated_events
        validated = [
            (i, r.output, r.event)
            for i, r in enumerate(routed)
            if r.output is not None and r.event is not None and r.output.topic == passed
        ]
        return Judged(result, validated)

    def _count(self, routed: Sequence[Routed]) -> None:
        for r in routed:
            if r.rejected is not None or r.event is None:
                continue
            source = r.event.source_registry.value
            if r.match_outcome is not None:
                metrics.MATCH_OUTCOMES.labels(source, r.match_outcome.value).inc()
            if r.match_outcome in (None, MatchOutcome.LINKED):
                metrics.EVENTS_VALIDATED.labels(r.event.event_type.value, source).inc()
        self._freshness.record(r.event for r in routed if r.rejected is None and r.event)


def _decode(message: InboundMessage) -> m.RegistryEvent | DecodeError:
    """The event, or why its bytes are not one (`route` turns that into a dead letter)."""
    size = len(message.value or b"")
    if size > MAX_EVENT_BYTES:  # refused unread: it reached the broker compressed
        return DecodeError("EVENT_TOO_LARGE", f"value is {size} bytes, over {MAX_EVENT_BYTES}")
    try:
        event: m.RegistryEvent = EVENT_CODEC.decode(message.value)
    except DecodeError as exc:
        return exc
    return event


Trust = SigningIdentity | TrustViolation | None


def _source(decoded: m.RegistryEvent | DecodeError, trust: Trust) -> str:
    """The source a message is judged by: its verified publisher; an event that is not
    verified counts as `unverified`, whatever it claims, so no one can get a registry
    quarantined by sending bad events in its name."""
    if isinstance(trust, SigningIdentity):
        return trust.publisher.publisher_id
    return UNVERIFIED if isinstance(decoded, m.RegistryEvent) else UNIDENTIFIED


def _untrusted(violation: TrustViolation, decoded: m.RegistryEvent | DecodeError) -> Routed:
    event = decoded if isinstance(decoded, m.RegistryEvent) else None
    return _rejected(violation.reason, str(violation), event)


def _quarantined(source: str, decoded: m.RegistryEvent | DecodeError) -> Routed:
    event = decoded if isinstance(decoded, m.RegistryEvent) else None
    text = f"source {source} is quarantined: replay after `popsync sources release {source}`"
    return _rejected("SOURCE_QUARANTINED", text, event)


def _unchanged_bytes(
    message: InboundMessage, decoded: m.RegistryEvent, normalized: m.RegistryEvent
) -> bytes | None:
    """The message's own value when the rules changed nothing and it is in the current
    schema: encoding the same record again would give the same fields (most events; the
    encoding was about a sixth of the validator's CPU). The rules hand back the very record
    they were given when normalizing changes nothing, so identity tells, without comparing."""
    if normalized is decoded and EVENT_CODEC.written_with_current_schema(message.value):
        return message.value
    return None


def _resolve_subject(
    event: m.RegistryEvent, key: bytes | None, aliases: Mapping[str, str]
) -> tuple[m.RegistryEvent, bytes | None]:
    """The event (and its expected key) with an alias of its subject replaced by the PIN.

    The registry keyed the message by the identifier it knows; the key is checked
    against that, then becomes the current PIN, so the citizen's partition is used.
    """
    reference = subject_reference(event)
    current = aliases.get(reference) if reference else None
    if current is None or current == event.subject_pin:
        return event, key
    resolved = event.model_copy(update={"subject_pin": current, "subject_legacy_id": reference})
    same_key = key is not None and reference is not None and key == reference.encode()
    return resolved, current.encode() if same_key else key


def _rejected(reason: str, text: str, event: m.RegistryEvent | None) -> Routed:
    """A message the runtime will dead-letter; `text` holds no personal data."""
    return Routed(None, Rejected(reason, text, event), event)
