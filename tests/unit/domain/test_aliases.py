"""Aliases in the validator: declared by events, resolved for events that name them."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

from popsync.services.validator.step import ValidatorStep

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.domain.aliases import Alias
from popsync.runtime.messages import InboundMessage
from popsync.runtime.processing import BatchProcessor
from popsync.settings import Settings
from tests.builders import Citizens, envelope, spoil
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    RecordingProducer,
    processing,
)
from tests.signing import dev_verifier, signed

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SETTINGS = Settings()
EVENTS = Codec(m.RegistryEvent)
CMND = "023456789"
_offsets = itertools.count()


def step() -> tuple[BatchProcessor, RecordingProducer, InMemoryAliasDirectory]:
    """The validator's step behind the runtime's error path, with an alias directory."""
    aliases = InMemoryAliasDirectory()
    validator = ValidatorStep(
        SETTINGS,
        InMemoryPinAllocator(),
        aliases,
        InMemoryMatchingStore(),
        clock=lambda: NOW,
        verifier=dev_verifier(),
    )
    process, producer = processing(validator, "validator", SETTINGS)
    return process, producer, aliases


def run(validator: BatchProcessor, *sent: tuple[bytes, m.RegistryEvent]) -> None:
    batch = [
        signed(InboundMessage("registry-events", 0, next(_offsets), key, EVENTS.encode(event)))
        for key, event in sent
    ]
    asyncio.run(validator(batch))


def outputs(producer: RecordingProducer) -> list[tuple[str, bytes | None, m.RegistryEvent | None]]:
    found: list[tuple[str, bytes | None, m.RegistryEvent | None]] = []
    for o in producer.sent:
        event = EVENTS.decode(o.value) if o.topic == SETTINGS.topics.validated_events else None
        found.append((o.topic, o.key, event))
    return found


def citizens() -> Citizens:
    return Citizens(itertools.count(500_000), NOW)


def named_by_cmnd(c: Citizens) -> m.RegistryEvent:
    return envelope(c.move(), subject_pin=None, subject_legacy_id=CMND)


def test_a_card_declares_the_cmnd_and_a_later_event_naming_it_reaches_the_citizen() -> None:
    c = citizens()
    validator, producer, aliases = step()
    card = spoil(c.card(), previous_id_number=CMND)
    assert card.subject_pin is not None
    run(validator, (card.subject_pin.encode(), card))
    assert aliases.pins == {CMND: card.subject_pin}
    run(validator, (CMND.encode(), named_by_cmnd(c)))
    topic, key, event = outputs(producer)[-1]
    assert topic == SETTINGS.topics.validated_events
    assert key == card.subject_pin.encode()  # the citizen's partition, not the CMND's
    assert event is not None
    assert (event.subject_pin, event.subject_legacy_id) == (card.subject_pin, CMND)


def test_an_alias_declared_earlier_in_the_same_batch_resolves() -> None:
    c = citizens()
    validator, producer, _ = step()
    card = spoil(c.card(), previous_id_number=CMND)
    assert card.subject_pin is not None
    run(validator, (card.subject_pin.encode(), card), (CMND.encode(), named_by_cmnd(c)))
    assert [t for t, _, _ in outputs(producer)] == [SETTINGS.topics.validated_events] * 2
    assert outputs(producer)[1][2] is not None
    assert outputs(producer)[1][2].subject_pin == card.subject_pin


def test_an_unknown_alias_is_parked_as_retryable() -> None:
    c = citizens()
    validator, producer, _ = step()
    run(validator, (CMND.encode(), named_by_cmnd(c)))
    letter = Codec(m.DeadLetter).decode(producer.sent[0].value)
    assert letter.reason_code == "ALIAS_UNKNOWN"


def test_a_replaced_pin_resolves_to_the_corrected_one() -> None:
    c = citizens()
    validator, producer, aliases = step()
    old = c.pin()
    correction = spoil(
        c.name_change(),
        change_kind=m.CivilStatusChangeKind.CORRECTION,
        new_full_name=None,
        previous_pin=old,
    )
    assert correction.subject_pin is not None
    run(validator, (correction.subject_pin.encode(), correction))
    assert aliases.pins == {old: correction.subject_pin}
    later = envelope(c.move(), subject_pin=old)
    run(validator, (old.encode(), later))
    _, key, event = outputs(producer)[-1]
    assert key == correction.subject_pin.encode()
    assert event is not None and event.subject_legacy_id == old


def test_an_alias_already_naming_another_citizen_is_refused() -> None:
    c = citizens()
    validator, producer, aliases = step()
    aliases.pins[CMND] = c.pin()
    card = spoil(c.card(), previous_id_number=CMND)
    assert card.subject_pin is not None
    run(validator, (card.subject_pin.encode(), card))
    letter = Codec(m.DeadLetter).decode(producer.sent[0].value)
    assert letter.reason_code == "ALIAS_TAKEN"


def test_the_key_must_still_be_what_the_registry_named_the_subject_by() -> None:
    c = citizens()
    validator, producer, aliases = step()
    asyncio.run(aliases.register([Alias(CMND, c.pin(), "CMND", "e")]))
    run(validator, (b"999999999", named_by_cmnd(c)))
    letter = Codec(m.DeadLetter).decode(producer.sent[0].value)
    assert letter.reason_code == "KEY_PIN_MISMATCH"
