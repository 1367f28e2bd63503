"""Validator rules: every violation has its own reason code; valid events are normalized."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from popsync.contract import models as m
from popsync.domain.rules import RuleViolation, check_event
from tests.builders import birth_event

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
SKEW = timedelta(minutes=5)
PIN = "079203000123"
KEY = PIN.encode()


def check(event: m.RegistryEvent, key: bytes | None = KEY) -> m.RegistryEvent:
    return check_event(event, key, NOW, SKEW)


def reason_of(event: m.RegistryEvent, key: bytes | None = KEY) -> str:
    with pytest.raises(RuleViolation) as info:
        check(event, key)
    return info.value.reason


def with_payload(**changes: Any) -> m.RegistryEvent:
    event = birth_event()
    return event.model_copy(update={"payload": event.payload.model_copy(update=changes)})


def residence(**address: Any) -> m.RegistryEvent:
    fields = {"province_code": "79", "commune_code": "26734", "address_line": " 12  Lê Lợi "}
    fields.update(address)
    return birth_event(
        event_type=m.EventType.PERMANENT_RESIDENCE_REGISTERED,
        source_registry=m.SourceRegistry.RESIDENCE,
        occurred_at=datetime(2020, 1, 1, tzinfo=UTC),
        recorded_at=datetime(2020, 1, 2, tzinfo=UTC),
        payload=m.PermanentResidenceRegistered(
            address=m.Address(**fields), effective_date=date(2020, 1, 1)
        ),
    )


def test_valid_birth_is_normalized() -> None:
    event = with_payload(full_name="  nguyễn   VĂN an ", birthplace_province="079")
    result = check(event)
    assert isinstance(result.payload, m.BirthRegistered)
    assert result.payload.full_name == "Nguyễn Văn An"
    assert result.payload.birthplace_province == "79"


def test_legacy_province_is_mapped_and_kept() -> None:
    result = check(residence(province_code="74"))  # Bình Dương, merged into TP.HCM
    assert isinstance(result.payload, m.PermanentResidenceRegistered)
    assert result.payload.address.province_code == "79"
    assert result.payload.address.legacy_province_code == "74"
    assert result.payload.address.address_line == "12 Lê Lợi"


def test_legacy_source_province_is_mapped() -> None:
    assert check(birth_event(source_province="35")).source_province == "37"  # Hà Nam → Ninh Bình


@pytest.mark.parametrize(
    ("event", "key", "reason"),
    [
        (birth_event(), None, "KEY_MISSING"),
        (birth_event(), b"079203000124", "KEY_PIN_MISMATCH"),
        (birth_event(subject_pin=None), KEY, "PIN_REQUIRED"),
        (birth_event(subject_pin="07920300012X"), KEY, "PIN_NOT_12_DIGITS"),
        (birth_event(subject_pin="0792030001"), KEY, "PIN_NOT_12_DIGITS"),
        (birth_event(subject_pin="099203000123"), b"099203000123", "PIN_UNKNOWN_PROVINCE"),
        (birth_event(subject_pin="079003000123"), b"079003000123", "PIN_CENTURY_GENDER_MISMATCH"),
        (birth_event(subject_pin="079204000123"), b"079204000123", "PIN_BIRTH_YEAR_MISMATCH"),
        (birth_event(subject_pin="079703000123"), b"079703000123", "PIN_BAD_GENDER_CENTURY_DIGIT"),
        (birth_event(event_type=m.EventType.UNKNOWN), KEY, "EVENT_TYPE_UNKNOWN"),
        (birth_event(event_type=m.EventType.DEATH_REGISTERED), KEY, "PAYLOAD_TYPE_MISMATCH"),
        (birth_event(source_registry=m.SourceRegistry.UNKNOWN), KEY, "SOURCE_UNKNOWN"),
        (birth_event(source_registry=m.SourceRegistry.RESIDENCE), KEY, "SOURCE_NOT_AUTHORITATIVE"),
        (birth_event(source_province="00"), KEY, "SOURCE_PROVINCE_UNKNOWN"),
        (
            birth_event(occurred_at=NOW + timedelta(days=1), recorded_at=NOW + timedelta(days=1)),
            KEY,
            "OCCURRED_IN_FUTURE",
        ),
        (
            birth_event(recorded_at=datetime(2003, 1, 1, tzinfo=UTC)),
            KEY,
            "RECORDED_BEFORE_OCCURRED",
        ),
        (with_payload(full_name="An\x07"), KEY, "NAME_CONTROL_CHARS"),
        (with_payload(full_name="   "), KEY, "NAME_EMPTY"),
        (with_payload(full_name="A" * 150), KEY, "NAME_TOO_LONG"),
        (with_payload(full_name="R2-D2"), KEY, "NAME_BAD_CHARACTERS"),
        (with_payload(birthplace_province="64x"), KEY, "BIRTHPLACE_PROVINCE_UNKNOWN"),
        (with_payload(nationality="VNM"), KEY, "NATIONALITY_MALFORMED"),
        (with_payload(father_pin="123"), KEY, "FATHER_PIN_INVALID"),
        (with_payload(mother_pin=PIN), KEY, "MOTHER_PIN_IS_SUBJECT"),
        (with_payload(registration_number="x" * 300), KEY, "FIELD_TOO_LONG"),
        (with_payload(registration_number="R\u200b1"), KEY, "CONTROL_CHARACTERS"),
        (residence(province_code="099"), KEY, "ADDRESS_PROVINCE_UNKNOWN"),
        (residence(commune_code="2673"), KEY, "COMMUNE_CODE_MALFORMED"),
    ],
)
def test_each_violation_has_its_reason(
    event: m.RegistryEvent, key: bytes | None, reason: str
) -> None:
    assert reason_of(event, key) == reason


def test_birth_date_in_future() -> None:
    event = birth_event(subject_pin="079226000123", occurred_at=NOW, recorded_at=NOW)
    event = event.model_copy(
        update={"payload": event.payload.model_copy(update={"birth_date": date(2026, 12, 24)})}
    )
    assert reason_of(event, b"079226000123") == "DATE_IN_FUTURE"


def test_death_before_the_birth_year_in_the_pin() -> None:
    event = birth_event(
        event_type=m.EventType.DEATH_REGISTERED,
        occurred_at=datetime(2004, 1, 1, tzinfo=UTC),
        recorded_at=datetime(2004, 1, 2, tzinfo=UTC),
        payload=m.DeathRegistered(
            death_date=date(2002, 5, 1), death_place_province="79", registration_number="D-1"
        ),
    )
    assert reason_of(event) == "DEATH_BEFORE_BIRTH"


def test_card_expiring_before_issue() -> None:
    event = birth_event(
        event_type=m.EventType.ID_CARD_ISSUED,
        source_registry=m.SourceRegistry.ID_CARD,
        occurred_at=datetime(2020, 1, 1, tzinfo=UTC),
        recorded_at=datetime(2020, 1, 1, tzinfo=UTC),
        payload=m.IdCardIssued(
            card=m.IdCard(
                card_number=PIN,
                issue_date=date(2020, 1, 1),
                expiry_date=date(2019, 1, 1),
                issuing_authority="Cục Cảnh sát",
            )
        ),
    )
    assert reason_of(event) == "EXPIRY_BEFORE_ISSUE"


def test_name_change_without_a_name() -> None:
    event = birth_event(
        event_type=m.EventType.CIVIL_STATUS_CHANGED,
        occurred_at=datetime(2020, 1, 1, tzinfo=UTC),
        recorded_at=datetime(2020, 1, 1, tzinfo=UTC),
        payload=m.CivilStatusChanged(
            change_kind=m.CivilStatusChangeKind.NAME_CHANGE,
            effective_date=date(2020, 1, 1),
            decision_number="QĐ-1",
        ),
    )
    assert reason_of(event) == "CHANGE_WITHOUT_VALUE"


def test_violation_messages_hold_no_pin() -> None:
    with pytest.raises(RuleViolation) as info:
        check(birth_event(subject_pin="079003000123"), b"079003000123")
    assert "003000" not in str(info.value)


def test_digits_of_other_scripts_are_not_commune_codes() -> None:
    assert reason_of(residence(commune_code="٢٦٧٣٤")) == "COMMUNE_CODE_MALFORMED"


def test_padded_subject_pin_is_rejected() -> None:
    event = birth_event(subject_pin=f" {PIN}")
    assert reason_of(event, f" {PIN}".encode()) == "PIN_NOT_12_DIGITS"
