"""The validator trusts an event only through its signature: through the real ValidatorStep,
an unsigned event is parked, a signed one goes on naming its verified publisher, a forged
one is parked, and each message is judged by its verified publisher."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime

from popsync.services.validator.step import ValidatorStep

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.publishers import DevDirectory, dev_publisher_id, dev_signer
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import StepResult
from popsync.runtime.quarantine import Quarantine, SourceGuard
from popsync.runtime.sources import UNIDENTIFIED, UNVERIFIED
from popsync.settings import Settings
from popsync.trust.signing import VERIFIED_KEY_HEADER, VERIFIED_PUBLISHER_HEADER, Signer, header
from tests.builders import PIN, birth_event, story_death, story_move
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    InMemoryQuarantineStore,
)
from tests.signing import dev_verifier, signed

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SETTINGS = Settings()
EVENTS = Codec(m.RegistryEvent)
CIVIL_STATUS = dev_publisher_id(m.SourceRegistry.CIVIL_STATUS)


def validate(*batch: InboundMessage) -> StepResult:
    step = ValidatorStep(
        SETTINGS,
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        InMemoryMatchingStore(),
        clock=lambda: NOW,
        verifier=dev_verifier(),
    )
    return asyncio.run(step(list(batch)))


def message(value: bytes, offset: int = 0, key: bytes = PIN.encode()) -> InboundMessage:
    return InboundMessage(SETTINGS.topics.registry_events, 0, offset, key, value)


def test_an_unsigned_event_is_parked_unsigned() -> None:
    result = validate(message(EVENTS.encode(birth_event())))
    assert result.outputs == []
    assert result.rejected[0].reason == "UNSIGNED"
    assert result.sources == [UNVERIFIED]


def test_a_signed_event_goes_on_naming_its_verified_publisher_and_key() -> None:
    value = EVENTS.encode(birth_event())
    result = validate(signed(message(value)))
    assert result.rejected == {}
    (output,) = result.outputs
    assert output.topic == SETTINGS.topics.validated_events and output.value == value
    assert header(output.headers, VERIFIED_PUBLISHER_HEADER) == CIVIL_STATUS.encode()
    key_id = dev_signer(m.SourceRegistry.CIVIL_STATUS).key_id
    assert header(output.headers, VERIFIED_KEY_HEADER) == key_id.encode()
    assert result.sources == [CIVIL_STATUS]


def test_a_death_signed_by_the_residence_registry_is_parked_as_forged() -> None:
    death = story_death(8, date(2024, 1, 1))  # declares CIVIL_STATUS
    value = EVENTS.encode(death)
    residence = dev_signer(m.SourceRegistry.RESIDENCE)
    forged = InboundMessage(
        SETTINGS.topics.registry_events,
        0,
        0,
        PIN.encode(),
        value,
        tuple(residence.headers(PIN.encode(), value, death)),
    )
    result = validate(forged)
    assert result.outputs == []
    assert result.rejected[0].reason == "SOURCE_NOT_SIGNER"
    assert result.sources == [UNVERIFIED]  # not the registry it names, nor the residence


def test_a_copied_signature_does_not_carry_over_to_changed_bytes() -> None:
    original = signed(message(EVENTS.encode(birth_event())))
    changed = EVENTS.encode(birth_event(source_sequence=8))
    copied = InboundMessage(original.topic, 0, 1, original.key, changed, original.headers)
    result = validate(copied)
    assert result.rejected[0].reason == "SIGNATURE_INVALID"
    assert result.sources == [UNVERIFIED]


def test_each_message_is_judged_by_its_verified_publisher() -> None:
    birth = EVENTS.encode(birth_event())
    move = EVENTS.encode(story_move(2, date(2010, 1, 1), "26734"))
    result = validate(
        signed(message(birth, 0)),
        message(birth, 1),  # unsigned
        message(b"junk", 2),  # not even an event
        signed(message(move, 3)),
    )
    residence = dev_publisher_id(m.SourceRegistry.RESIDENCE)
    assert result.sources == [CIVIL_STATUS, UNVERIFIED, UNIDENTIFIED, residence]
    assert {i: r.reason for i, r in result.rejected.items()} == {1: "UNSIGNED", 2: "BAD_MAGIC"}
    publishers = [header(o.headers, VERIFIED_PUBLISHER_HEADER) for o in result.outputs]
    assert publishers == [CIVIL_STATUS.encode(), residence.encode()]


def test_a_key_added_after_the_directory_was_read_is_known_at_once() -> None:
    directory = DevDirectory()
    step = ValidatorStep(
        SETTINGS,
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        InMemoryMatchingStore(),
        clock=lambda: NOW,
        verifier=dev_verifier(directory),  # read now; next read due in an hour
    )
    newcomer = Signer.generate(CIVIL_STATUS, "civil-status-new-key")
    key, publisher = directory.entries[dev_signer(m.SourceRegistry.CIVIL_STATUS).key_id]
    directory.entries[newcomer.key_id] = (
        replace(key, key_id=newcomer.key_id, public_key=newcomer.public_key),
        publisher,
    )
    event = birth_event()
    value = EVENTS.encode(event)
    signed_by_newcomer = InboundMessage(
        SETTINGS.topics.registry_events,
        0,
        0,
        PIN.encode(),
        value,
        tuple(newcomer.headers(PIN.encode(), value, event)),
    )
    result = asyncio.run(step([signed_by_newcomer]))
    assert result.rejected == {}
    assert header(result.outputs[0].headers, VERIFIED_KEY_HEADER) == b"civil-status-new-key"


def test_a_released_source_is_let_through_at_once() -> None:
    store = InMemoryQuarantineStore()
    asyncio.run(store.quarantine([Quarantine(CIVIL_STATUS, "validator", "R", "test")]))
    guard = SourceGuard(store, refresh_seconds=3600)
    asyncio.run(guard.refresh())  # as the runtime does before each batch
    step = ValidatorStep(
        SETTINGS,
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        InMemoryMatchingStore(),
        clock=lambda: NOW,
        guard=guard,
        verifier=dev_verifier(),
    )
    held = asyncio.run(step([signed(message(EVENTS.encode(birth_event())))]))
    assert held.rejected[0].reason == "SOURCE_QUARANTINED"
    store.release(CIVIL_STATUS)  # within the hour before the guard's next scheduled read
    other = birth_event(event_id="2f1c7a52-0000-4000-8000-000000000002")
    passed = asyncio.run(step([signed(message(EVENTS.encode(other), offset=1))]))
    assert passed.rejected == {}
