"""The verification service's HTTP contract: a request is checked once, here — a well-formed
PIN, a name or a birth date, a known province (a pre-2025 code mapped to the current one),
a 5-digit commune — and anything else is a pydantic ValidationError, never another
exception, and its messages never echo the PIN given."""

from __future__ import annotations

import contextlib
import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from popsync.contract import models as m
from popsync.domain.provinces import CURRENT_PROVINCES, LEGACY_PROVINCES
from popsync.verification.models import (
    MAX_NAME_CHARS,
    Match,
    Residence,
    VerifyAnswer,
    VerifyBatchRequest,
    VerifyRequest,
    checked_pin,
)

PIN = "079090000123"  # TP. Hồ Chí Minh, male, born 1990
BIRTH = datetime.date(1990, 5, 17)


def request(**fields: object) -> VerifyRequest:
    return VerifyRequest.model_validate({"pin": PIN, "full_name": "Đặng Thị Ánh", **fields})


def errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple[str | int, ...], str]]:
    return [(tuple(error["loc"]), error["type"]) for error in exc.value.errors()]


# ------------------------------------------------------------------------------ the PIN


def test_a_request_with_a_pin_and_a_name_or_a_birth_date_is_well_formed() -> None:
    by_name = VerifyRequest(pin=PIN, full_name="Đặng Thị Ánh")
    by_birth = VerifyRequest(pin=PIN, birth_date=BIRTH)
    assert (by_name.pin, by_name.full_name, by_name.birth_date) == (PIN, "Đặng Thị Ánh", None)
    assert (by_birth.pin, by_birth.full_name, by_birth.birth_date) == (PIN, None, BIRTH)
    assert by_name.sex is None and by_name.residence is None


def test_spaces_around_the_pin_and_the_name_are_dropped() -> None:
    verified = request(pin=f"  {PIN} ", full_name="  Đặng Thị Ánh\u00a0")
    assert verified.pin == PIN
    assert verified.full_name == "Đặng Thị Ánh"


@pytest.mark.parametrize(
    "pin",
    [
        "074090000123",  # Bình Dương, a pre-2025 code, stays valid in a PIN
        "001300000001",  # Hà Nội, female, born 2000
        "096599999999",  # the 2100s, female
        "002000000000",  # Hà Giang (merged into Tuyên Quang), serial 0
    ],
)
def test_pins_of_current_and_pre_2025_provinces_are_accepted_as_given(pin: str) -> None:
    assert request(pin=pin).pin == pin
    assert checked_pin(pin) == pin


@pytest.mark.parametrize(
    "pin",
    [
        "07909000012",  # 11 digits
        "0790900001234",  # 13
        "07909000012a",
        "079 90000123",
        "999090000123",  # no province 99
        "179090000123",  # the prefix is "0" + the 2-digit code
        "079690000123",  # 4th digit 6-9 is unassigned
        "٠٧٩٠٩٠٠٠٠١٢٣",  # Arabic-Indic digits: not ASCII
        "",
    ],
)
def test_a_malformed_pin_is_refused_naming_the_field_never_echoing_the_value(pin: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(pin=pin)
    assert [loc for loc, _ in errors(exc)] == [("pin",)]
    messages = json.dumps(exc.value.errors(include_input=False, include_url=False), default=str)
    assert not pin or pin not in messages


def test_checked_pin_raises_a_plain_value_error_without_the_pin() -> None:
    with pytest.raises(ValueError) as exc:
        checked_pin("999090000123")
    assert "999090000123" not in str(exc.value)
    assert "PIN_UNKNOWN_PROVINCE" in str(exc.value)


def test_a_pin_given_as_a_number_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        VerifyRequest.model_validate_json(b'{"pin": 79090000123, "full_name": "An"}')
    assert errors(exc) == [(("pin",), "string_type")]


# ----------------------------------------------------------------- what must be given


def test_a_name_or_a_birth_date_is_required_sex_alone_can_be_read_from_the_pin() -> None:
    for fields in ({}, {"sex": "M"}, {"sex": "F", "residence": {"province": "79"}}):
        with pytest.raises(ValidationError, match="give full_name or birth_date"):
            VerifyRequest.model_validate({"pin": PIN, **fields})


@pytest.mark.parametrize("name", ["", " ", "\u3000\t ", "x" * (MAX_NAME_CHARS + 1)])
def test_an_empty_or_overlong_name_is_refused(name: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(full_name=name)
    assert [loc for loc, _ in errors(exc)] == [("full_name",)]


def test_a_name_of_the_longest_length_is_accepted() -> None:
    assert request(full_name="x" * MAX_NAME_CHARS).full_name == "x" * MAX_NAME_CHARS


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        request(alive=True)
    assert errors(exc) == [(("alive",), "extra_forbidden")]
    with pytest.raises(ValidationError) as exc:
        request(residence={"province": "79", "street": "Lê Lợi"})
    assert errors(exc) == [(("residence", "street"), "extra_forbidden")]


def test_a_request_is_frozen() -> None:
    verified = request()
    with pytest.raises(ValidationError):
        verified.pin = "001300000001"  # type: ignore[misc]


# --------------------------------------------------------------------- dates and sex


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1990-05-17", BIRTH),
        ("2000-02-29", datetime.date(2000, 2, 29)),
        ("1900-01-01", datetime.date(1900, 1, 1)),
    ],
)
def test_birth_dates_are_iso_dates(given: str, expected: datetime.date) -> None:
    body = json.dumps({"pin": PIN, "birth_date": given}).encode()
    assert VerifyRequest.model_validate_json(body).birth_date == expected


@pytest.mark.parametrize("given", ["1990-02-30", "1900-02-29", "17/05/1990", "1990-5-17", "x"])
def test_a_date_that_does_not_exist_or_is_not_iso_is_refused(given: str) -> None:
    body = json.dumps({"pin": PIN, "birth_date": given}).encode()
    with pytest.raises(ValidationError) as exc:
        VerifyRequest.model_validate_json(body)
    assert [loc for loc, _ in errors(exc)] == [("birth_date",)]


def test_sex_is_m_or_f() -> None:
    assert request(sex="M").sex is m.Sex.M
    assert request(sex="F").sex is m.Sex.F
    for sex in ("m", "X", "", "male"):
        with pytest.raises(ValidationError) as exc:
            request(sex=sex)
        assert [loc for loc, _ in errors(exc)] == [("sex",)]


# ------------------------------------------------------------------------- residence


@pytest.mark.parametrize(
    ("given", "current"),
    [
        ("79", "79"),
        ("079", "79"),
        (" 79 ", "79"),
        ("74", "79"),  # Bình Dương → TP. Hồ Chí Minh
        ("074", "79"),
        ("77", "79"),  # Bà Rịa - Vũng Tàu → TP. Hồ Chí Minh
        ("02", "08"),  # Hà Giang → Tuyên Quang
        ("45", "44"),  # Quảng Trị (old) → Quảng Trị (the code of old Quảng Bình)
        ("44", "44"),  # Quảng Bình's code, kept by the new Quảng Trị
        ("62", "51"),  # Kon Tum → Quảng Ngãi
    ],
)
def test_the_residence_province_is_held_as_the_current_code(given: str, current: str) -> None:
    assert Residence(province=given).province == current


@pytest.mark.parametrize("code", sorted(LEGACY_PROVINCES))
def test_every_pre_2025_code_maps_to_the_province_it_became_part_of(code: str) -> None:
    merged_into = LEGACY_PROVINCES[code].merged_into
    assert Residence(province=code).province == merged_into
    assert Residence(province=f"0{code}").province == merged_into
    assert merged_into in CURRENT_PROVINCES


@pytest.mark.parametrize("code", ["99", "00", "03", "7", "0799", "179", "7a", "", "٧٩"])
def test_an_unknown_province_is_refused(code: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Residence(province=code)
    assert [loc for loc, _ in errors(exc)] == [("province",)]


def test_the_commune_is_five_digits_or_absent() -> None:
    assert Residence(province="79", commune="26734").commune == "26734"
    assert Residence(province="79", commune=" 26734 ").commune == "26734"
    assert Residence(province="79").commune is None
    for commune in ("2673", "267345", "2673a", "", "２６７３４"):
        with pytest.raises(ValidationError) as exc:
            Residence(province="79", commune=commune)
        assert [loc for loc, _ in errors(exc)] == [("commune",)]


def test_a_residence_in_a_request_is_mapped_too() -> None:
    verified = request(residence={"province": "074", "commune": "25747"})
    assert verified.residence == Residence(province="79", commune="25747")


# --------------------------------------------------------------------------- batches


def test_a_batch_holds_at_least_one_item_each_checked() -> None:
    batch = VerifyBatchRequest.model_validate(
        {
            "items": [
                {"pin": PIN, "full_name": "An"},
                {"pin": "001300000001", "birth_date": "2000-01-01"},
            ]
        }
    )
    assert [item.pin for item in batch.items] == [PIN, "001300000001"]
    with pytest.raises(ValidationError) as exc:
        VerifyBatchRequest.model_validate({"items": []})
    assert errors(exc) == [(("items",), "too_short")]
    with pytest.raises(ValidationError) as exc:
        VerifyBatchRequest.model_validate(
            {"items": [{"pin": PIN, "full_name": "An"}, {"pin": PIN}]}
        )
    assert [loc for loc, _ in errors(exc)] == [("items", 1)]


# ------------------------------------------------------------------------- the answer


def test_an_answer_is_each_attribute_asked_and_alive() -> None:
    answer = VerifyAnswer(attributes={"full_name": Match.MATCH, "sex": Match.NO_MATCH}, alive=None)
    assert json.loads(answer.model_dump_json()) == {
        "attributes": {"full_name": "match", "sex": "no_match"},
        "alive": None,
    }


# ------------------------------------------------------------------ hostile input


_FIELDS = ("pin", "full_name", "birth_date", "sex", "residence", "province", "commune", "x")
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=12,
)
# Values near the valid ones, so that validation goes past the first check.
_NEAR = st.fixed_dictionaries(
    {
        "pin": st.sampled_from([PIN, " 074090000123", "079690000123", "0790900001"])
        | st.text(alphabet="0123456789 \u00a0٠", min_size=10, max_size=14),
    },
    optional={
        "full_name": st.text(max_size=30),
        "birth_date": st.sampled_from(["1990-05-17", "1990-02-30", "", "0000-01-01"])
        | st.integers(),
        "sex": st.sampled_from(["M", "F", "X", None]),
        "residence": st.fixed_dictionaries(
            {"province": st.text(alphabet="0123456789 a", max_size=4)},
            optional={"commune": st.text(alphabet="0123456789", max_size=6) | st.none()},
        )
        | _JSON,
    },
)


def _validates_or_refuses(body: bytes, model: type[BaseModel] = VerifyRequest) -> None:
    with contextlib.suppress(ValidationError):
        model.model_validate_json(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_request_or_a_validation_error(body: bytes) -> None:
    _validates_or_refuses(body)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_arbitrary_json_is_a_request_or_a_validation_error(value: object) -> None:
    _validates_or_refuses(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(_NEAR)
def test_nearly_valid_requests_are_a_request_or_a_validation_error(
    value: dict[str, object],
) -> None:
    body = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    _validates_or_refuses(body)
    _validates_or_refuses(json.dumps({"items": [value, value]}).encode(), VerifyBatchRequest)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_are_a_batch_or_a_validation_error(body: bytes) -> None:
    _validates_or_refuses(b'{"items": [' + body + b"]}", VerifyBatchRequest)
