"""What the validator sends on: the normalized event, in the current schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from popsync.services.validator.step import ValidatorStep

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime.messages import InboundMessage
from popsync.settings import Settings
from tests.builders import PIN, birth_event, first_release_birth
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
)
from tests.signing import dev_verifier, signed

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SETTINGS = Settings()
EVENTS = Codec(m.RegistryEvent)


def step() -> ValidatorStep:
    return ValidatorStep(
        SETTINGS,
        InMemoryPinAllocator(),
        InMemoryAliasDirectory(),
        InMemoryMatchingStore(),
        clock=lambda: NOW,
        verifier=dev_verifier(),
    )


def validated_value(value: bytes) -> bytes | None:
    message = signed(InboundMessage("registry-events", 0, 0, PIN.encode(), value))
    result = asyncio.run(step()([message]))
    (output,) = result.outputs
    assert output.topic == SETTINGS.topics.validated_events
    return output.value


def test_an_event_the_rules_leave_as_it_is_goes_on_with_its_own_bytes() -> None:
    value = EVENTS.encode(birth_event())
    assert validated_value(value) is value


def test_an_event_the_rules_normalize_goes_on_re_encoded() -> None:
    payload = birth_event().payload.model_copy(update={"full_name": "nguyễn  văn an"})
    sent = validated_value(EVENTS.encode(birth_event(payload=payload)))
    assert EVENTS.decode(sent) == birth_event()  # name cased and spaced by the rules


def test_an_event_of_an_earlier_writer_goes_on_in_the_current_schema() -> None:
    sent = validated_value(first_release_birth())
    assert sent == EVENTS.encode(birth_event())
    assert EVENTS.written_with_current_schema(sent)
