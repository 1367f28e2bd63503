"""Personal identification number: structure, consistency, construction, masking."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popsync.domain.pin import (
    PIN_BAD_GENDER_CENTURY_DIGIT,
    PIN_BIRTH_YEAR_MISMATCH,
    PIN_CENTURY_GENDER_MISMATCH,
    PIN_NOT_12_DIGITS,
    PIN_UNKNOWN_PROVINCE,
    Pin,
    PinError,
    Sex,
    check_pin_matches,
    gender_century_digit,
    make_pin,
    mask_pin,
    parse_pin,
)
from popsync.domain.provinces import LEGACY_PROVINCES

PIN_PROVINCES = sorted("0" + code for code in LEGACY_PROVINCES)


def test_parse_valid_pin() -> None:
    pin = parse_pin("079301012345")
    assert pin.value == "079301012345"
    assert pin.province_code == "079"
    assert pin.gender_century_digit == 3
    assert pin.sex == "F"
    assert pin.century_start == 2000
    assert pin.birth_year_2d == 1
    assert pin.birth_year == 2001
    assert pin.serial == "012345"


def test_parse_strips_whitespace_and_accepts_legacy_province() -> None:
    pin = parse_pin("  074085000001\n")  # Bình Dương, merged into TP.HCM in 2025
    assert pin.value == "074085000001"
    assert (pin.sex, pin.birth_year) == ("M", 1985)


@pytest.mark.parametrize(
    ("digit", "sex", "century"),
    [(0, "M", 1900), (1, "F", 1900), (2, "M", 2000), (3, "F", 2000), (4, "M", 2100),
     (5, "F", 2100)],
)  # fmt: skip
def test_gender_century_digits(digit: int, sex: str, century: int) -> None:
    pin = parse_pin(f"001{digit}99000000")
    assert pin.sex == sex
    assert pin.century_start == century
    assert pin.birth_year == century + 99


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", PIN_NOT_12_DIGITS),
        ("07930101234", PIN_NOT_12_DIGITS),
        ("0793010123456", PIN_NOT_12_DIGITS),
        ("07930101234a", PIN_NOT_12_DIGITS),
        ("079-01012345", PIN_NOT_12_DIGITS),
        ("079 01012345", PIN_NOT_12_DIGITS),
        ("٠٧٩٣٠١٠١٢٣٤٥", PIN_NOT_12_DIGITS),  # Arabic-Indic digits pass str.isdigit()
        ("\uff10\uff17\uff19301012345", PIN_NOT_12_DIGITS),  # full-width digits
        ("000301012345", PIN_UNKNOWN_PROVINCE),
        ("003301012345", PIN_UNKNOWN_PROVINCE),
        ("099301012345", PIN_UNKNOWN_PROVINCE),
        ("179301012345", PIN_UNKNOWN_PROVINCE),
        ("079601012345", PIN_BAD_GENDER_CENTURY_DIGIT),
        ("079901012345", PIN_BAD_GENDER_CENTURY_DIGIT),
    ],
)
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(PinError) as excinfo:
        parse_pin(text)
    assert excinfo.value.reason == reason
    assert isinstance(excinfo.value, ValueError)


@given(st.sampled_from("6789"))
def test_digits_6_to_9_are_never_a_century(digit: str) -> None:
    with pytest.raises(PinError) as excinfo:
        parse_pin(f"001{digit}00000000")
    assert excinfo.value.reason == PIN_BAD_GENDER_CENTURY_DIGIT


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(PinError):
        Pin("123")


def test_errors_and_repr_do_not_leak_the_pin() -> None:
    pin_text = "079301987654"
    assert "301987" not in repr(Pin(pin_text))
    assert repr(Pin(pin_text)) == "Pin('079******654')"
    with pytest.raises(PinError) as excinfo:
        parse_pin("099301987654")
    assert "301987" not in str(excinfo.value)
    with pytest.raises(PinError) as excinfo:
        check_pin_matches(Pin(pin_text), datetime.date(1987, 1, 1), "F")
    assert "301987" not in str(excinfo.value)


def test_check_pin_matches_ok() -> None:
    check_pin_matches(parse_pin("001085000001"), datetime.date(1985, 3, 4), "M")
    check_pin_matches(parse_pin("001185000001"), datetime.date(1985, 3, 4), "F")
    check_pin_matches(parse_pin("079324000001"), datetime.date(2024, 12, 31), "F")
    check_pin_matches(parse_pin("079400000001"), datetime.date(2100, 1, 1), "M")


@pytest.mark.parametrize(
    ("text", "birth", "sex", "reason"),
    [
        ("001085000001", datetime.date(1985, 1, 1), "F", PIN_CENTURY_GENDER_MISMATCH),
        ("001085000001", datetime.date(2085, 1, 1), "M", PIN_CENTURY_GENDER_MISMATCH),
        ("001285000001", datetime.date(1985, 1, 1), "M", PIN_CENTURY_GENDER_MISMATCH),
        ("001085000001", datetime.date(1899, 1, 1), "M", PIN_CENTURY_GENDER_MISMATCH),
        ("001085000001", datetime.date(2201, 1, 1), "M", PIN_CENTURY_GENDER_MISMATCH),
        ("001085000001", datetime.date(1986, 1, 1), "M", PIN_BIRTH_YEAR_MISMATCH),
        ("079324000001", datetime.date(2023, 12, 31), "F", PIN_BIRTH_YEAR_MISMATCH),
    ],
)
def test_check_pin_mismatches(text: str, birth: datetime.date, sex: Sex, reason: str) -> None:
    with pytest.raises(PinError) as excinfo:
        check_pin_matches(parse_pin(text), birth, sex)
    assert excinfo.value.reason == reason


def test_gender_century_digit_function() -> None:
    assert gender_century_digit("M", 1900) == 0
    assert gender_century_digit("F", 1999) == 1
    assert gender_century_digit("M", 2000) == 2
    assert gender_century_digit("F", 2099) == 3
    assert gender_century_digit("M", 2100) == 4
    assert gender_century_digit("F", 2199) == 5
    for year in (1899, 2200):
        with pytest.raises(ValueError, match="cannot be encoded"):
            gender_century_digit("M", year)
    with pytest.raises(ValueError, match="sex"):
        gender_century_digit("X", 2000)  # type: ignore[arg-type]


def test_make_pin() -> None:
    pin = make_pin("079", "F", 2003, 42)
    assert pin.value == "079303000042"
    assert make_pin("001", "M", 1900, 999_999).value == "001000999999"
    with pytest.raises(ValueError, match="serial"):
        make_pin("079", "F", 2003, 1_000_000)
    with pytest.raises(ValueError, match="serial"):
        make_pin("079", "F", 2003, -1)
    with pytest.raises(PinError) as excinfo:
        make_pin("099", "F", 2003, 1)
    assert excinfo.value.reason == PIN_UNKNOWN_PROVINCE


@given(
    province=st.sampled_from(PIN_PROVINCES),
    sex=st.sampled_from(["M", "F"]),
    birth=st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2199, 12, 31)),
    serial=st.integers(min_value=0, max_value=999_999),
)
def test_make_parse_check_round_trip(
    province: str, sex: Sex, birth: datetime.date, serial: int
) -> None:
    pin = make_pin(province, sex, birth.year, serial)
    parsed = parse_pin(pin.value)
    assert parsed == pin
    assert (parsed.province_code, parsed.sex, parsed.birth_year) == (province, sex, birth.year)
    assert int(parsed.serial) == serial
    check_pin_matches(parsed, birth, sex)


@given(st.text(max_size=20))
def test_parse_pin_only_raises_pin_error(text: str) -> None:
    try:
        pin = parse_pin(text)
    except PinError:
        return
    assert len(pin.value) == 12 and pin.value.isdigit()


def test_mask_pin_examples() -> None:
    assert mask_pin("079123456123") == "079******123"
    assert mask_pin("") == ""
    assert mask_pin("12345") == "*****"
    assert mask_pin("0791234561234567") == "*" * 12
    assert mask_pin(None) == "***"  # type: ignore[arg-type]


@given(st.text(max_size=40))
def test_mask_pin_never_leaks_middle_digits(text: str) -> None:
    masked = mask_pin(text)
    if len(text) == 12:
        assert masked == text[:3] + "******" + text[9:]
    else:
        assert masked == "*" * min(len(text), 12)


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_mask_pin_hides_gender_and_birth_year_of_any_pin(text: str) -> None:
    masked = mask_pin(text)
    assert masked[3:9] == "******"
    assert len(masked) == 12
    assert text[3:9] not in masked  # at most 3 consecutive digits survive
