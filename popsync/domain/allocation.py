"""PIN allocation for a birth registered without a PIN: what the new PIN must say.

A PIN is the registering province (3 digits), the gender/century digit, the
2-digit birth year and a 6-digit serial. Everything but the serial follows from
the birth event; the serial comes from a `PinAllocator`, which must hand out each
serial once across every worker and restart (see `popsync.adapters.postgres.pins`), and
must give a re-delivered birth event the PIN it gave the first time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from popsync.contract import models as m
from popsync.domain.pin import Sex, gender_century_digit, make_pin
from popsync.domain.provinces import UnknownProvinceCode, resolve_province

MAX_SERIAL = 999_999
# Stand-ins for a provisional PIN when the event itself is broken: the rules then
# report what is actually wrong (unknown province, sex, year) instead of the PIN.
_FALLBACK_PROVINCE = "001"
_FALLBACK_YEAR = 2000


class SerialsExhausted(RuntimeError):
    """Every serial of a prefix is taken (one province, sex, century and birth year)."""


@dataclass(frozen=True)
class AllocationRequest:
    event_id: str
    prefix: str  # province (3) + gender/century digit + birth year (2): 6 digits


class PinAllocator(Protocol):
    async def allocate(self, requests: Sequence[AllocationRequest]) -> Mapping[str, str]:
        """A PIN per request's event id; the same event id always gets the same PIN."""
        ...


def birth_without_pin(event: m.RegistryEvent) -> m.BirthRegistered | None:
    """The birth payload of an event that needs a PIN allocated, else None."""
    if event.subject_pin is None and isinstance(event.payload, m.BirthRegistered):
        return event.payload
    return None


def provisional_pin(source_province: str, birth: m.BirthRegistered) -> str:
    """A structurally valid PIN with serial 000000, so the birth can be checked by the
    same rules as any other before a real serial is spent on it."""
    return make_pin(*_prefix_parts(source_province, birth), serial=0).value


def allocation_request(
    event_id: str, source_province: str, birth: m.BirthRegistered
) -> AllocationRequest:
    """For a birth that passed the rules (so every part of the prefix is valid)."""
    return AllocationRequest(event_id, provisional_pin(source_province, birth)[:6])


def _prefix_parts(source_province: str, birth: m.BirthRegistered) -> tuple[str, Sex, int]:
    try:
        province = "0" + resolve_province(source_province).current.code
    except UnknownProvinceCode:
        province = _FALLBACK_PROVINCE
    sex: Sex = "F" if birth.sex is m.Sex.F else "M"
    year = birth.birth_date.year
    try:
        gender_century_digit(sex, year)
    except ValueError:
        year = _FALLBACK_YEAR
    return province, sex, year


def pin_for(prefix: str, serial: int) -> str:
    if not 0 < serial <= MAX_SERIAL:
        raise SerialsExhausted(f"no serial left for prefix {prefix[:4]}..")
    return f"{prefix}{serial:06d}"
