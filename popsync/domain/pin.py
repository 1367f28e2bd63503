"""Personal identification number (PIN, số định danh cá nhân).

Layout of the 12 digits: PPP G YY NNNNNN
  PPP     province of birth registration: "0" + 2-digit admin code, pre-merger codes included
  G       gender and century: 1900s 0 male / 1 female, 2000s 2/3, 2100s 4/5
  YY      last two digits of the birth year
  NNNNNN  serial
There is NO checksum, so structural validation plus consistency with the registered birth
date and sex is all that can be checked. PINs are personal data: error messages (which
become dead-letter texts) show no part of the PIN, reprs at most the masked form, never the
birth-year or gender digits.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from popsync.domain.provinces import is_known_pin_province

__all__ = [
    "PIN_BAD_GENDER_CENTURY_DIGIT",
    "PIN_BIRTH_YEAR_MISMATCH",
    "PIN_CENTURY_GENDER_MISMATCH",
    "PIN_NOT_12_DIGITS",
    "PIN_UNKNOWN_PROVINCE",
    "Pin",
    "PinError",
    "Sex",
    "check_pin_matches",
    "gender_century_digit",
    "make_pin",
    "mask_pin",
    "parse_pin",
]

Sex = Literal["M", "F"]

PIN_NOT_12_DIGITS = "PIN_NOT_12_DIGITS"
PIN_UNKNOWN_PROVINCE = "PIN_UNKNOWN_PROVINCE"
PIN_BAD_GENDER_CENTURY_DIGIT = "PIN_BAD_GENDER_CENTURY_DIGIT"
PIN_CENTURY_GENDER_MISMATCH = "PIN_CENTURY_GENDER_MISMATCH"
PIN_BIRTH_YEAR_MISMATCH = "PIN_BIRTH_YEAR_MISMATCH"

_PIN_LENGTH = 12
_FIRST_CENTURY = 1900
_LAST_YEAR = 2199  # digits 4/5 encode the 2100s; digits 6-9 are unassigned
_MAX_SERIAL = 999_999


class PinError(ValueError):
    """A PIN is malformed or inconsistent; ``reason`` is one of the PIN_* constants."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def mask_pin(text: str) -> str:
    """Mask a PIN for logs: "079123456123" -> "079******123"; never raises.

    Only a 12-character value keeps its province prefix and last 3 characters; anything else
    is fully starred (capped at 12) so malformed input cannot leak digits either.
    """
    if not isinstance(text, str):  # defensive: used on untrusted values in error paths
        return "***"
    if len(text) == _PIN_LENGTH:
        return text[:3] + "*" * 6 + text[-3:]
    return "*" * min(len(text), _PIN_LENGTH)


def _validate(value: str) -> None:
    ok = isinstance(value, str) and len(value) == _PIN_LENGTH
    if not (ok and value.isascii() and value.isdigit()):
        got = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise PinError(PIN_NOT_12_DIGITS, f"expected 12 ASCII digits, got {got}")
    if not is_known_pin_province(value[:3]):
        raise PinError(PIN_UNKNOWN_PROVINCE, "province prefix is neither current nor legacy")
    if value[3] not in "012345":
        raise PinError(PIN_BAD_GENDER_CENTURY_DIGIT, "4th digit must be 0-5 (6-9 are unassigned)")


@dataclass(frozen=True, slots=True)
class Pin:
    """A structurally valid PIN (validated on construction). ``repr`` shows it masked."""

    value: str

    def __post_init__(self) -> None:
        _validate(self.value)

    def __repr__(self) -> str:
        return f"Pin({mask_pin(self.value)!r})"

    @property
    def province_code(self) -> str:
        """3-digit province-of-registration prefix, possibly a pre-merger code."""
        return self.value[:3]

    @property
    def gender_century_digit(self) -> int:
        return int(self.value[3])

    @property
    def sex(self) -> Sex:
        return "M" if self.gender_century_digit % 2 == 0 else "F"

    @property
    def century_start(self) -> int:
        return _FIRST_CENTURY + 100 * (self.gender_century_digit // 2)

    @property
    def birth_year_2d(self) -> int:
        return int(self.value[4:6])

    @property
    def serial(self) -> str:
        return self.value[6:]

    @property
    def birth_year(self) -> int:
        return self.century_start + self.birth_year_2d


def parse_pin(text: str) -> Pin:
    """Parse a PIN, tolerating surrounding whitespace; raises PinError."""
    return Pin(text.strip())


def gender_century_digit(sex: Sex, birth_year: int) -> int:
    """The 4th PIN digit for ``sex`` born in ``birth_year`` (1900..2199); ValueError otherwise."""
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    if not _FIRST_CENTURY <= birth_year <= _LAST_YEAR:
        raise ValueError(f"birth year {birth_year} cannot be encoded in a PIN")
    return 2 * ((birth_year - _FIRST_CENTURY) // 100) + (0 if sex == "M" else 1)


def make_pin(province_code3: str, sex: Sex, birth_year: int, serial: int) -> Pin:
    """Build a PIN (tests, simulation); ValueError/PinError on out-of-range parts."""
    if not 0 <= serial <= _MAX_SERIAL:
        raise ValueError(f"serial must be in 0..{_MAX_SERIAL}, got {serial}")
    digit = gender_century_digit(sex, birth_year)
    return Pin(f"{province_code3}{digit}{birth_year % 100:02d}{serial:06d}")


def check_pin_matches(pin: Pin, birth_date: datetime.date, sex: Sex) -> None:
    """Raise PinError unless the PIN encodes this sex, birth century and birth year."""
    try:
        expected = gender_century_digit(sex, birth_date.year)
    except ValueError:
        if sex not in ("M", "F"):
            raise
        # The birth year lies outside every century a PIN can encode.
        raise PinError(
            PIN_CENTURY_GENDER_MISMATCH, "birth year outside 1900-2199 cannot match any PIN"
        ) from None
    if pin.gender_century_digit != expected:
        raise PinError(
            PIN_CENTURY_GENDER_MISMATCH,
            "gender/century digit does not match the registered sex and birth century",
        )
    if pin.birth_year_2d != birth_date.year % 100:
        raise PinError(
            PIN_BIRTH_YEAR_MISMATCH,
            "birth-year digits do not match the registered birth date",
        )
