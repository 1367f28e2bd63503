"""`popsync.domain.allocation.PinAllocator`: one PIN per event id, the same on every call;
distinct events get distinct, valid PINs of their request's prefix. Run against
`tests.fakes.InMemoryPinAllocator` and `popsync.adapters.postgres.pins.PostgresPinAllocator`."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import TYPE_CHECKING

import pytest

from popsync.contract import models as m
from popsync.domain.allocation import AllocationRequest, allocation_request
from popsync.domain.pin import parse_pin
from tests.builders import birth_event

if TYPE_CHECKING:
    from popsync.domain.allocation import PinAllocator

pytestmark = pytest.mark.integration


def birth(event_id: str, born: date, sex: m.Sex, province: str = "79") -> AllocationRequest:
    payload = birth_event().payload
    assert isinstance(payload, m.BirthRegistered)
    return allocation_request(
        event_id, province, payload.model_copy(update={"birth_date": born, "sex": sex})
    )


def assert_valid(pins: dict[str, str], requests: list[AllocationRequest]) -> None:
    assert set(pins) == {r.event_id for r in requests}
    for request in requests:
        pin = parse_pin(pins[request.event_id])
        assert pin.value.startswith(request.prefix)
        assert pin.serial != "000000"  # the provisional PIN's serial is never handed out


def test_no_request_no_pin(pin_allocator: PinAllocator) -> None:
    assert asyncio.run(pin_allocator.allocate([])) == {}


def test_distinct_births_get_distinct_valid_pins_of_their_prefix(
    pin_allocator: PinAllocator,
) -> None:
    requests = [birth(f"an-{i}", date(2003, 1, 2), m.Sex.M) for i in range(5)]
    requests += [birth(f"binh-{i}", date(1999, 5, 6), m.Sex.F, province="01") for i in range(3)]
    pins = dict(asyncio.run(pin_allocator.allocate(requests)))
    assert_valid(pins, requests)
    assert len(set(pins.values())) == len(requests)
    assert {r.prefix for r in requests} == {"079203", "001199"}


def test_an_event_gets_the_same_pin_on_every_call(pin_allocator: PinAllocator) -> None:
    first = [birth("an", date(2003, 1, 2), m.Sex.M), birth("binh", date(2003, 1, 2), m.Sex.M)]
    again = [first[1], birth("cuong", date(2003, 1, 2), m.Sex.M), first[0]]

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        return dict(await pin_allocator.allocate(first)), dict(await pin_allocator.allocate(again))

    before, after = asyncio.run(scenario())
    assert_valid(before, first)
    assert_valid(after, again)
    assert after["an"] == before["an"]
    assert after["binh"] == before["binh"]
    assert after["cuong"] not in before.values()


def test_an_event_requested_twice_in_one_batch_gets_one_pin(pin_allocator: PinAllocator) -> None:
    request = birth("an", date(2003, 1, 2), m.Sex.M)
    other = birth("binh", date(2003, 1, 2), m.Sex.M)
    pins = dict(asyncio.run(pin_allocator.allocate([request, other, request])))
    assert_valid(pins, [request, other])
    assert pins["an"] != pins["binh"]
