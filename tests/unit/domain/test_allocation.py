"""PIN allocation in the validator, with the in-memory allocator of tests/fakes.py (the
PostgreSQL one has integration tests in tests/integration/test_identity.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from popsync.services.validator.step import ValidatorStep

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.allocation import (
    AllocationRequest,
    SerialsExhausted,
    pin_for,
    provisional_pin,
)
from popsync.domain.pin import check_pin_matches, parse_pin
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import BatchProcessor
from popsync.settings import Settings
from tests.builders import birth_event
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    RecordingProducer,
    processing,
)
from tests.signing import dev_verifier, signed

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
EVENTS = Codec(m.RegistryEvent)
NOTICES = Codec(m.IdentityAssigned)
SETTINGS = Settings()


def pinless_birth(event_id: str = "b-1", **overrides: Any) -> m.RegistryEvent:
    return birth_event(event_id=event_id, subject_pin=None, **overrides)


def run(step: BatchProcessor, *events: m.RegistryEvent) -> None:
    batch = [
        signed(InboundMessage("registry-events", 0, i, b"R-1", EVENTS.encode(e)))
        for i, e in enumerate(events)
    ]
    asyncio.run(step(batch))


def validator() -> ValidatorStep:
    allocator = InMemoryPinAllocator()
    aliases = InMemoryAliasDirectory()
    matching = InMemoryMatchingStore()
    return ValidatorStep(
        SETTINGS, allocator, aliases, matching, clock=lambda: NOW, verifier=dev_verifier()
    )


def make_step() -> tuple[BatchProcessor, RecordingProducer]:
    """The validator's step behind the runtime's error path."""
    return processing(validator(), "validator", SETTINGS)


def test_the_provisional_pin_encodes_the_registering_province_sex_and_birth_year() -> None:
    event = pinless_birth(source_province="74")  # Bình Dương, now part of TP. Hồ Chí Minh
    assert isinstance(event.payload, m.BirthRegistered)
    pin = parse_pin(provisional_pin(event.source_province, event.payload))
    assert pin.value == "079203000000"
    check_pin_matches(pin, event.payload.birth_date, "M")


def test_a_birth_without_a_pin_is_validated_with_a_new_pin_and_the_registry_is_told() -> None:
    step, producer = make_step()
    run(step, pinless_birth())
    validated = [o for o in producer.sent if o.topic == SETTINGS.topics.validated_events]
    notices = [o for o in producer.sent if o.topic == SETTINGS.topics.identity_assigned]
    assert len(validated) == 1 and len(notices) == 1
    event = EVENTS.decode(validated[0].value)
    assert event.subject_pin == "079203000001"
    assert validated[0].key == b"079203000001"  # re-keyed: the citizen's partition
    notice = NOTICES.decode(notices[0].value)
    assert (notice.pin, notice.event_id, notice.registration_number) == (
        "079203000001",
        "b-1",
        "R-1",
    )


def test_a_redelivered_birth_keeps_its_pin_and_others_get_new_ones() -> None:
    step, producer = make_step()
    run(step, pinless_birth("b-1"), pinless_birth("b-2"))
    run(step, pinless_birth("b-1"))
    pins = [
        EVENTS.decode(o.value).subject_pin
        for o in producer.sent
        if o.topic == SETTINGS.topics.validated_events
    ]
    assert pins == ["079203000001", "079203000002", "079203000001"]


@pytest.mark.parametrize(
    ("overrides", "reason", "parked_as"),
    [
        # No publisher speaks for a province that never existed: the signature check parks
        # it before the rules would.
        ({"source_province": "00"}, "SOURCE_PROVINCE_UNKNOWN", "PROVINCE_OUT_OF_SCOPE"),
        ({"event_type": m.EventType.DEATH_REGISTERED}, "PAYLOAD_TYPE_MISMATCH", None),
        ({"occurred_at": datetime(2030, 1, 1, tzinfo=UTC)}, "OCCURRED_IN_FUTURE", None),
    ],
)
def test_an_invalid_birth_without_a_pin_is_dead_lettered_for_what_is_wrong(
    overrides: dict[str, Any], reason: str, parked_as: str | None
) -> None:
    step, producer = make_step()
    routed = validator().route(
        InboundMessage("registry-events", 0, 0, None, EVENTS.encode(pinless_birth(**overrides))),
        NOW,
    )
    assert routed.reason == reason
    run(step, pinless_birth(**overrides))
    assert [o.topic for o in producer.sent] == [SETTINGS.topics.dead_letters]
    assert ("popsync.reason", (parked_as or reason).encode()) in producer.sent[0].headers


def test_serials_run_out_loudly() -> None:
    assert pin_for("079203", 999_999) == "079203999999"
    with pytest.raises(SerialsExhausted):
        pin_for("079203", 1_000_000)


def test_in_memory_allocator_is_idempotent_per_event() -> None:
    allocator = InMemoryPinAllocator()
    first = asyncio.run(allocator.allocate([AllocationRequest("e", "079203")]))
    again = asyncio.run(allocator.allocate([AllocationRequest("e", "079203")]))
    assert first == again == {"e": "079203000001"}
