"""Province tables and code resolution (Resolution 202/2025/QH15)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popsync.domain.provinces import (
    CURRENT_PROVINCES,
    LEGACY_PROVINCES,
    UnknownProvinceCode,
    is_known_pin_province,
    resolve_province,
)

# Units that kept their territory unchanged through the 2025 merger.
UNCHANGED = {"01", "04", "11", "12", "14", "20", "22", "38", "40", "42", "46"}


def test_exactly_34_current_and_63_legacy_units() -> None:
    assert len(CURRENT_PROVINCES) == 34
    assert len(LEGACY_PROVINCES) == 63


def test_table_keys_match_codes_and_names_are_nfc() -> None:
    for code, province in CURRENT_PROVINCES.items():
        assert province.code == code and len(code) == 2 and code.isdigit()
        assert unicodedata.is_normalized("NFC", province.name)
    for code, legacy in LEGACY_PROVINCES.items():
        assert legacy.code == code and len(code) == 2 and code.isdigit()
        assert unicodedata.is_normalized("NFC", legacy.name)
    assert len({p.name for p in CURRENT_PROVINCES.values()}) == 34
    assert len({p.name for p in LEGACY_PROVINCES.values()}) == 63


def test_every_legacy_unit_maps_to_an_existing_current_one() -> None:
    for legacy in LEGACY_PROVINCES.values():
        assert legacy.merged_into in CURRENT_PROVINCES


def test_every_current_province_is_reached() -> None:
    assert {p.merged_into for p in LEGACY_PROVINCES.values()} == set(CURRENT_PROVINCES)


def test_every_current_code_is_a_legacy_code_that_maps_to_itself() -> None:
    # Guarantees that a code means the same province whether read as old or new.
    for code in CURRENT_PROVINCES:
        assert LEGACY_PROVINCES[code].merged_into == code


def test_eleven_units_were_kept_and_23_were_formed_by_merger() -> None:
    sizes: dict[str, int] = {}
    for legacy in LEGACY_PROVINCES.values():
        sizes[legacy.merged_into] = sizes.get(legacy.merged_into, 0) + 1
    assert {code for code, n in sizes.items() if n == 1} == UNCHANGED
    assert sum(1 for n in sizes.values() if n > 1) == 23


@pytest.mark.parametrize(
    ("legacy_code", "legacy_name", "current_code", "current_name"),
    [
        ("02", "Hà Giang", "08", "Tuyên Quang"),
        ("15", "Yên Bái", "15", "Lào Cai"),
        ("10", "Lào Cai", "15", "Lào Cai"),
        ("06", "Bắc Kạn", "19", "Thái Nguyên"),
        ("27", "Bắc Ninh", "24", "Bắc Ninh"),
        ("24", "Bắc Giang", "24", "Bắc Ninh"),
        ("26", "Vĩnh Phúc", "25", "Phú Thọ"),
        ("17", "Hòa Bình", "25", "Phú Thọ"),
        ("30", "Hải Dương", "31", "Hải Phòng"),
        ("34", "Thái Bình", "33", "Hưng Yên"),
        ("35", "Hà Nam", "37", "Ninh Bình"),
        ("36", "Nam Định", "37", "Ninh Bình"),
        ("44", "Quảng Bình", "44", "Quảng Trị"),
        ("45", "Quảng Trị", "44", "Quảng Trị"),
        ("46", "Thừa Thiên Huế", "46", "Huế"),
        ("49", "Quảng Nam", "48", "Đà Nẵng"),
        ("62", "Kon Tum", "51", "Quảng Ngãi"),
        ("52", "Bình Định", "52", "Gia Lai"),
        ("64", "Gia Lai", "52", "Gia Lai"),
        ("58", "Ninh Thuận", "56", "Khánh Hòa"),
        ("54", "Phú Yên", "66", "Đắk Lắk"),
        ("67", "Đắk Nông", "68", "Lâm Đồng"),
        ("60", "Bình Thuận", "68", "Lâm Đồng"),
        ("70", "Bình Phước", "75", "Đồng Nai"),
        ("74", "Bình Dương", "79", "TP. Hồ Chí Minh"),
        ("77", "Bà Rịa - Vũng Tàu", "79", "TP. Hồ Chí Minh"),
        ("80", "Long An", "80", "Tây Ninh"),
        ("72", "Tây Ninh", "80", "Tây Ninh"),
        ("82", "Tiền Giang", "82", "Đồng Tháp"),
        ("87", "Đồng Tháp", "82", "Đồng Tháp"),
        ("83", "Bến Tre", "86", "Vĩnh Long"),
        ("84", "Trà Vinh", "86", "Vĩnh Long"),
        ("91", "Kiên Giang", "91", "An Giang"),
        ("89", "An Giang", "91", "An Giang"),
        ("94", "Sóc Trăng", "92", "Cần Thơ"),
        ("93", "Hậu Giang", "92", "Cần Thơ"),
        ("95", "Bạc Liêu", "96", "Cà Mau"),
    ],
)
def test_merger_mapping(
    legacy_code: str, legacy_name: str, current_code: str, current_name: str
) -> None:
    legacy = LEGACY_PROVINCES[legacy_code]
    assert legacy.name == legacy_name
    assert legacy.merged_into == current_code
    assert CURRENT_PROVINCES[current_code].name == current_name
    assert resolve_province(legacy_code).current.code == current_code


def test_resolve_current_code_two_and_three_digits() -> None:
    for given_code in ("79", "079", " 079 ", "79\n"):
        res = resolve_province(given_code)
        assert res.current == CURRENT_PROVINCES["79"]
        assert res.current.name == "TP. Hồ Chí Minh"
        assert res.is_legacy is False
        assert res.given_code == given_code.strip()


def test_resolve_legacy_code_is_mapped_not_dropped() -> None:
    res = resolve_province("074")
    assert res.current.code == "79"
    assert res.is_legacy is True
    assert res.given_code == "074"
    assert resolve_province("74") == resolve_province("74")  # value object
    assert resolve_province("74").current == res.current


def test_reused_code_resolves_as_current() -> None:
    # "44" was Quảng Bình and is now Quảng Trị: the code is in force, so not legacy.
    res = resolve_province("044")
    assert res.current.name == "Quảng Trị" and res.is_legacy is False
    # Old Quảng Trị (45) is legacy and lands in the same province.
    assert resolve_province("45").current.code == "44"
    assert resolve_province("45").is_legacy is True


@pytest.mark.parametrize("code", sorted(LEGACY_PROVINCES))
def test_every_legacy_code_resolves_in_both_forms(code: str) -> None:
    two, three = resolve_province(code), resolve_province("0" + code)
    assert two.current == three.current == CURRENT_PROVINCES[LEGACY_PROVINCES[code].merged_into]
    assert two.is_legacy is three.is_legacy is (code not in CURRENT_PROVINCES)


@pytest.mark.parametrize(
    "code",
    ["", " ", "00", "000", "03", "003", "99", "099", "7", "179", "0079", "7a", "o79", "-79",
     "+79", "7 9", "٧٩", "\uff17\uff19", "²⁴", "None"],
)  # fmt: skip
def test_unknown_codes_raise(code: str) -> None:
    with pytest.raises(UnknownProvinceCode) as excinfo:
        resolve_province(code)
    assert excinfo.value.code == code
    assert isinstance(excinfo.value, ValueError)


@given(st.text(max_size=5))
def test_resolve_either_succeeds_consistently_or_raises_unknown(code: str) -> None:
    try:
        res = resolve_province(code)
    except UnknownProvinceCode:
        return
    stripped = code.strip()
    assert stripped.isascii() and stripped.isdigit() and len(stripped) in (2, 3)
    assert res.current.code in CURRENT_PROVINCES


def test_is_known_pin_province() -> None:
    assert is_known_pin_province("001")
    assert is_known_pin_province("079")
    assert is_known_pin_province("074")  # Bình Dương: pre-merger code in old PINs
    assert is_known_pin_province("093")  # Hậu Giang
    for code in ("000", "003", "099", "79", "0079", "179", " 079", "07a", ""):
        assert not is_known_pin_province(code)
    known = {c for c in (f"{n:03d}" for n in range(1000)) if is_known_pin_province(c)}
    assert known == {"0" + c for c in LEGACY_PROVINCES}
