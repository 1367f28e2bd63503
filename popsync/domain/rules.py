"""Validation and normalization of one registry event, before it may change a citizen.

`check_event` either returns the event normalized (NFC names in canonical
casing, legacy province codes mapped to the current 34 with the original kept
where the contract has room for it) or raises `RuleViolation` with a
machine-readable reason. Rules that need the citizen's state (death after a
known birth date, moves after a death) belong to the merge, not here.

Every reason code raised here is listed, with its description and whether a
replay could pass, in `popsync.domain.reasons`; a test keeps the two in step.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar

from popsync.contract import models as m
from popsync.contract.codec import payload_record_for
from popsync.domain.aliases import is_legacy_id
from popsync.domain.authority import may_publish
from popsync.domain.legal_time import legal_date
from popsync.domain.names import InvalidName, normalize_name
from popsync.domain.pin import Pin, PinError, check_pin_matches, parse_pin
from popsync.domain.provinces import UnknownProvinceCode, resolve_province

MAX_TEXT_LENGTH = 200  # registry numbers, authorities, reasons
MAX_ADDRESS_LENGTH = 300
MAX_ID_LENGTH = 64  # event and correlation ids (UUIDs are 36)
EARLIEST_DATE = date(1900, 1, 1)  # nothing a PIN can describe happened earlier
_COMMUNE_CODE = re.compile(r"[0-9]{5}")  # ASCII only: \d would take other scripts' digits
_CARD_NUMBER = re.compile(r"[0-9]{12}")
_CMND = re.compile(r"[0-9]{9}")  # the identity-card number before PINs


Record = TypeVar("Record", bound=m.ContractModel)


def _updated(record: Record, normalized: Mapping[str, Any]) -> Record:
    """`record` with its `normalized` values: the same object when they change nothing, as
    for most events (the validator then sends the event's own bytes on), a copy otherwise."""
    if all(getattr(record, name) == value for name, value in normalized.items()):
        return record
    return record.model_copy(update=dict(normalized))


class RuleViolation(ValueError):
    """An event that breaks a rule; `reason` is a stable code, the message has no personal data."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_event(
    event: m.RegistryEvent, key: bytes | None, now: datetime, future_skew: timedelta
) -> m.RegistryEvent:
    """The event, normalized, if every rule holds; else RuleViolation.

    A sector record without subject PIN passes with none: the validator matches it to a
    citizen next (`popsync.identity`); every other event has its PIN checked here.
    """
    _check_type_and_source(event)
    pin = _check_subject(event, key)
    latest = now + future_skew
    _check_times(event, latest)
    source = _current_province(event.source_province, "SOURCE_PROVINCE_UNKNOWN")
    payload = _PAYLOAD_RULES[type(event.payload)](event.payload, pin, legal_date(latest))
    return _updated(event, {"source_province": source, "payload": payload})


def _check_type_and_source(event: m.RegistryEvent) -> None:
    if event.event_type is m.EventType.UNKNOWN:
        raise RuleViolation("EVENT_TYPE_UNKNOWN", "event type unknown to this contract version")
    if payload_record_for(event.event_type) != event.payload.AVRO_NAME:
        raise RuleViolation("PAYLOAD_TYPE_MISMATCH", "payload record does not match event type")
    if event.source_registry is m.SourceRegistry.UNKNOWN:
        raise RuleViolation("SOURCE_UNKNOWN", "source registry unknown to this contract version")
    if not may_publish(event.source_registry, event.event_type):
        raise RuleViolation(
            "SOURCE_NOT_AUTHORITATIVE",
            f"{event.source_registry.value} may not publish {event.event_type.value}",
        )
    _check_text("event_id", event.event_id, MAX_ID_LENGTH)
    if event.correlation_id is not None:
        _check_text("correlation_id", event.correlation_id, MAX_ID_LENGTH)


def _check_subject(event: m.RegistryEvent, key: bytes | None) -> Pin | None:
    """The subject's PIN, checked with the message key; None only for a sector record the
    validator matches to a citizen afterwards (it has no PIN, so any key will do)."""
    if event.subject_pin is None:
        # A birth without one is checked with a provisional PIN and then gets a real
        # one (popsync.domain.allocation); a known alias was resolved to the PIN before
        # the rules; a sector record without one is matched (popsync.identity); every
        # other event must name its subject.
        if event.subject_legacy_id is None and isinstance(event.payload, m.SectorRecordRegistered):
            return None
        if event.subject_legacy_id is None:
            raise RuleViolation("PIN_REQUIRED", "event has no subject PIN")
        if not is_legacy_id(event.subject_legacy_id):
            raise RuleViolation("LEGACY_ID_MALFORMED", "subject legacy id is not 9 or 12 digits")
        raise RuleViolation("ALIAS_UNKNOWN", "no citizen is known by the subject legacy id")
    try:
        pin = parse_pin(event.subject_pin)
    except PinError as exc:
        raise RuleViolation(exc.reason, str(exc)) from exc
    if pin.value != event.subject_pin:  # padded: would otherwise name another citizen
        raise RuleViolation("PIN_NOT_12_DIGITS", "subject PIN has surrounding whitespace")
    if not key:  # null or zero-length: either way no citizen to partition by
        raise RuleViolation("KEY_MISSING", "message has no key; the key must be the subject PIN")
    if key != event.subject_pin.encode():
        raise RuleViolation("KEY_PIN_MISMATCH", "message key differs from the subject PIN")
    return pin


def _check_times(event: m.RegistryEvent, latest: datetime) -> None:
    if event.occurred_at > latest:
        raise RuleViolation("OCCURRED_IN_FUTURE", "occurred_at is in the future")
    if event.recorded_at > latest:
        raise RuleViolation("RECORDED_IN_FUTURE", "recorded_at is in the future")
    if event.recorded_at < event.occurred_at:
        raise RuleViolation("RECORDED_BEFORE_OCCURRED", "recorded before it occurred")
    if legal_date(event.occurred_at) < EARLIEST_DATE:
        raise RuleViolation("DATE_TOO_EARLY", "occurred_at before 1900")


def _check_date(name: str, value: date, latest: date) -> None:
    if value > latest:
        raise RuleViolation("DATE_IN_FUTURE", f"{name} is in the future")
    if value < EARLIEST_DATE:
        raise RuleViolation("DATE_TOO_EARLY", f"{name} before 1900")


def _check_not_before_birth_year(name: str, value: date, pin: Pin) -> None:
    if value.year < pin.birth_year:
        raise RuleViolation("DATE_BEFORE_BIRTH", f"{name} before the birth year in the PIN")


def _check_text(name: str, value: str, limit: int = MAX_TEXT_LENGTH) -> str:
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise RuleViolation("FIELD_EMPTY", f"{name} is empty")
    if len(text) > limit:
        raise RuleViolation("FIELD_TOO_LONG", f"{name} longer than {limit} characters")
    # isprintable() is False for every Cc/Cf character (and a few others): a cheap test
    # that spares most texts the per-character one.
    if not text.isprintable() and any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise RuleViolation("CONTROL_CHARACTERS", f"{name} contains control characters")
    return " ".join(text.split())


def _name(field: str, raw: str) -> str:
    try:
        return normalize_name(raw)
    except InvalidName as exc:
        raise RuleViolation(exc.reason, f"{field}: {exc}") from exc


# Reason codes spelled out (not built from the field name) so that they can be found.
_OTHER_PIN_REASONS: dict[str, tuple[str, str]] = {
    "father_pin": ("FATHER_PIN_INVALID", "FATHER_PIN_IS_SUBJECT"),
    "mother_pin": ("MOTHER_PIN_INVALID", "MOTHER_PIN_IS_SUBJECT"),
    "spouse_pin": ("SPOUSE_PIN_INVALID", "SPOUSE_PIN_IS_SUBJECT"),
    "previous_pin": ("PREVIOUS_PIN_INVALID", "PREVIOUS_PIN_IS_SUBJECT"),
}


def _other_pin(field: str, raw: str | None, subject: Pin) -> str | None:
    if raw is None:
        return None
    invalid, is_subject = _OTHER_PIN_REASONS[field]
    try:
        other = parse_pin(raw)
    except PinError as exc:
        raise RuleViolation(invalid, f"{field} is not a valid PIN") from exc
    if other.value == subject.value:
        raise RuleViolation(is_subject, f"{field} equals the subject PIN")
    return other.value


def _current_province(code: str, reason: str) -> str:
    try:
        return resolve_province(code).current.code
    except UnknownProvinceCode as exc:
        raise RuleViolation(reason, "province code is neither current nor legacy") from exc


def _address(address: m.Address) -> m.Address:
    try:
        resolution = resolve_province(address.province_code)
    except UnknownProvinceCode as exc:
        raise RuleViolation("ADDRESS_PROVINCE_UNKNOWN", "address province code unknown") from exc
    _check_commune("commune_code", address.commune_code)
    return _updated(
        address,
        {
            "province_code": resolution.current.code,
            "legacy_province_code": resolution.given_code if resolution.is_legacy else None,
            "address_line": _check_text("address_line", address.address_line, MAX_ADDRESS_LENGTH),
        },
    )


def _check_commune(name: str, code: str) -> None:
    # Shape only: no list of the post-2025 communes is bundled, so a well-formed but
    # unknown code passes.
    if not _COMMUNE_CODE.fullmatch(code):
        raise RuleViolation("COMMUNE_CODE_MALFORMED", f"{name} is not 5 digits")


def _sex(sex: m.Sex) -> Literal["M", "F"]:
    return "M" if sex is m.Sex.M else "F"


def _birth(p: m.BirthRegistered, pin: Pin, latest: date) -> m.BirthRegistered:
    _check_date("birth_date", p.birth_date, latest)
    try:
        check_pin_matches(pin, p.birth_date, _sex(p.sex))
    except PinError as exc:
        raise RuleViolation(exc.reason, str(exc)) from exc
    if p.birthplace_commune is not None:
        _check_commune("birthplace_commune", p.birthplace_commune)
    return _updated(
        p,
        {
            "full_name": _name("full_name", p.full_name),
            "birthplace_province": _current_province(
                p.birthplace_province, "BIRTHPLACE_PROVINCE_UNKNOWN"
            ),
            "ethnicity": None if p.ethnicity is None else _check_text("ethnicity", p.ethnicity),
            "nationality": _nationality(p.nationality),
            "father_pin": _other_pin("father_pin", p.father_pin, pin),
            "mother_pin": _other_pin("mother_pin", p.mother_pin, pin),
            "registration_number": _check_text("registration_number", p.registration_number),
        },
    )


def _nationality(code: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2}", code):
        raise RuleViolation("NATIONALITY_MALFORMED", "nationality is not an ISO alpha-2 code")
    return code.upper()


def _death(p: m.DeathRegistered, pin: Pin, latest: date) -> m.DeathRegistered:
    _check_date("death_date", p.death_date, latest)
    if p.death_date.year < pin.birth_year:
        raise RuleViolation("DEATH_BEFORE_BIRTH", "death date before the birth year in the PIN")
    return _updated(
        p,
        {
            "death_place_province": _current_province(
                p.death_place_province, "DEATH_PLACE_PROVINCE_UNKNOWN"
            ),
            "registration_number": _check_text("registration_number", p.registration_number),
        },
    )


def _death_annulled(p: m.DeathAnnulled, pin: Pin, latest: date) -> m.DeathAnnulled:
    _check_date("decision_date", p.decision_date, latest)
    _check_not_before_birth_year("decision_date", p.decision_date, pin)
    return _updated(
        p,
        {
            "death_registration_number": _check_text(
                "death_registration_number", p.death_registration_number
            ),
            "court_decision_number": _check_text("court_decision_number", p.court_decision_number),
        },
    )


def _marriage(p: m.MarriageRegistered, pin: Pin, latest: date) -> m.MarriageRegistered:
    _check_date("marriage_date", p.marriage_date, latest)
    _check_not_before_birth_year("marriage_date", p.marriage_date, pin)
    return _updated(
        p,
        {
            "spouse_pin": _other_pin("spouse_pin", p.spouse_pin, pin),
            "spouse_full_name": _name("spouse_full_name", p.spouse_full_name),
            "registration_number": _check_text("registration_number", p.registration_number),
        },
    )


def _divorce(p: m.DivorceRecorded, pin: Pin, latest: date) -> m.DivorceRecorded:
    _check_date("divorce_date", p.divorce_date, latest)
    _check_not_before_birth_year("divorce_date", p.divorce_date, pin)
    return _updated(
        p,
        {
            "spouse_pin": _other_pin("spouse_pin", p.spouse_pin, pin),
            "court_decision_number": _check_text("court_decision_number", p.court_decision_number),
        },
    )


_CHANGE_REQUIRES: dict[m.CivilStatusChangeKind, tuple[str, ...]] = {
    m.CivilStatusChangeKind.NAME_CHANGE: ("new_full_name",),
    m.CivilStatusChangeKind.ETHNICITY_CHANGE: ("new_ethnicity",),
    m.CivilStatusChangeKind.CORRECTION: (
        "new_full_name",
        "new_ethnicity",
        "corrected_birth_date",
        "corrected_sex",
        "previous_pin",
    ),
}


def _civil_status(p: m.CivilStatusChanged, pin: Pin, latest: date) -> m.CivilStatusChanged:
    if p.change_kind is m.CivilStatusChangeKind.UNKNOWN:
        raise RuleViolation("CHANGE_KIND_UNKNOWN", "civil-status change kind unknown")
    if all(getattr(p, name) is None for name in _CHANGE_REQUIRES[p.change_kind]):
        raise RuleViolation("CHANGE_WITHOUT_VALUE", "civil-status change carries no new value")
    _check_date("effective_date", p.effective_date, latest)
    _check_not_before_birth_year("effective_date", p.effective_date, pin)
    if p.corrected_birth_date is not None:
        _check_date("corrected_birth_date", p.corrected_birth_date, latest)
    update: dict[str, Any] = {
        "decision_number": _check_text("decision_number", p.decision_number),
    }
    if p.new_full_name is not None:
        update["new_full_name"] = _name("new_full_name", p.new_full_name)
    if p.new_ethnicity is not None:
        update["new_ethnicity"] = _check_text("new_ethnicity", p.new_ethnicity)
    if p.previous_pin is not None:
        update["previous_pin"] = _other_pin("previous_pin", p.previous_pin, pin)
    return _updated(p, update)


def _permanent(
    p: m.PermanentResidenceRegistered, pin: Pin, latest: date
) -> m.PermanentResidenceRegistered:
    _check_date("effective_date", p.effective_date, latest)
    _check_not_before_birth_year("effective_date", p.effective_date, pin)
    return _updated(p, {"address": _address(p.address)})


def _temporary(
    p: m.TemporaryResidenceRegistered, pin: Pin, latest: date
) -> m.TemporaryResidenceRegistered:
    _check_date("effective_date", p.effective_date, latest)
    _check_not_before_birth_year("effective_date", p.effective_date, pin)
    if p.valid_until is not None and p.valid_until < p.effective_date:
        raise RuleViolation("VALID_UNTIL_BEFORE_EFFECTIVE", "valid_until before effective_date")
    return _updated(p, {"address": _address(p.address)})


def _deregistered(p: m.ResidenceDeregistered, pin: Pin, latest: date) -> m.ResidenceDeregistered:
    _check_date("effective_date", p.effective_date, latest)
    _check_not_before_birth_year("effective_date", p.effective_date, pin)
    return _updated(p, {"reason": _check_text("reason", p.reason)})


def _sector_record(
    p: m.SectorRecordRegistered, _: Pin | None, latest: date
) -> m.SectorRecordRegistered:
    # Not checked against the subject PIN (birth year, sex): sector data is often wrong where
    # the PIN is right, and it sets no citizen field; an operator may link a record whose
    # birth date has its day and month swapped.
    _check_date("birth_date", p.birth_date, latest)
    if p.legacy_id is not None and not _CMND.fullmatch(p.legacy_id):
        raise RuleViolation("LEGACY_ID_MALFORMED", "sector record legacy id is not a 9-digit CMND")
    return _updated(
        p,
        {
            "record_number": _check_text("record_number", p.record_number),
            "full_name": _name("full_name", p.full_name),
            "birthplace_province": None
            if p.birthplace_province is None
            else _current_province(p.birthplace_province, "BIRTHPLACE_PROVINCE_UNKNOWN"),
            "hometown_province": None
            if p.hometown_province is None
            else _current_province(p.hometown_province, "HOMETOWN_PROVINCE_UNKNOWN"),
        },
    )


def _id_card(p: m.IdCardIssued, pin: Pin, latest: date) -> m.IdCardIssued:
    card = p.card
    if not _CARD_NUMBER.fullmatch(card.card_number):
        raise RuleViolation("CARD_NUMBER_MALFORMED", "card number is not 12 digits")
    _check_date("issue_date", card.issue_date, latest)
    _check_not_before_birth_year("issue_date", card.issue_date, pin)
    if card.expiry_date is not None and card.expiry_date <= card.issue_date:
        raise RuleViolation("EXPIRY_BEFORE_ISSUE", "card expires before it is issued")
    authority = _check_text("issuing_authority", card.issuing_authority)
    if p.previous_id_number is not None and not _CMND.fullmatch(p.previous_id_number):
        raise RuleViolation("LEGACY_ID_MALFORMED", "previous id number is not a 9-digit CMND")
    return _updated(p, {"card": _updated(card, {"issuing_authority": authority})})


_PAYLOAD_RULES: dict[type[Any], Any] = {
    m.BirthRegistered: _birth,
    m.DeathRegistered: _death,
    m.DeathAnnulled: _death_annulled,
    m.MarriageRegistered: _marriage,
    m.DivorceRecorded: _divorce,
    m.CivilStatusChanged: _civil_status,
    m.PermanentResidenceRegistered: _permanent,
    m.TemporaryResidenceRegistered: _temporary,
    m.ResidenceDeregistered: _deregistered,
    m.IdCardIssued: _id_card,
    m.SectorRecordRegistered: _sector_record,
}
