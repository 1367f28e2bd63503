"""A catalogue of bad input, each kind with a test (`popsync.domain.reasons`).

Every kind is built as the real bytes a registry (or a broken producer) would put on
the topic and sent through the real `ValidatorStep.route`: it must become exactly one
dead letter on the dead-letter topic, with its reason code and the original key and
value byte for byte. None may crash the worker, none may be lost. Two kinds pass the
validator and are caught by the merge as conflicts instead.

`bad_messages` is shared with `tests/integration/test_bad_input.py`, which sends the
same kinds through the real broker.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from popsync.services.validator import app as validator_app
from popsync.services.validator.app import ValidatorStep

from popsync.adapters.kafka.producer import OutboundMessage
from popsync.contract import models as m
from popsync.contract.codec import (
    HEADER_SIZE,
    MAGIC,
    Codec,
    DecodeError,
    from_avro_datum,
    to_avro_datum,
)
from popsync.contract.json_form import event_to_json
from popsync.domain.aliases import InMemoryAliasDirectory
from popsync.domain.allocation import InMemoryPinAllocator
from popsync.domain.merge import Applied, CitizenState, Duplicate, Rejected, apply_event, fold
from popsync.domain.pin import make_pin
from popsync.domain.reasons import CONFLICTS, REASONS, is_retryable
from popsync.identity.decisions import InMemoryMatchingStore
from popsync.runtime.worker import InboundMessage
from popsync.settings import Settings

Sex = Literal["M", "F"]

EVENT_CODEC = Codec(m.RegistryEvent)
DEAD_LETTER_CODEC = Codec(m.DeadLetter)
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[4]

NAME = "Lương Thị Huyền Trang"  # the subject of every event; must never reach a message text
BIRTH = date(2003, 5, 17)
ONE_MB = 1_000_000

# Catalogue entries that no input can produce, and why (each is still tested below).
NOT_CONSTRUCTIBLE = {
    "CONTRACT_VIOLATION": "models are generated from the schemas (test_contract), so every "
    "datum fastavro decodes validates; `popsync publish` raises it for JSON lines",
    "INTERNAL_ERROR": "only a bug raises it; test_an_unexpected_error_is_dead_lettered injects one",
    "ALIAS_TAKEN": "needs the alias directory's state; tests/unit/test_aliases.py covers it",
}


# --------------------------------------------------------------------------------------------
# Avro wire details, for the kinds that spoil the bytes themselves


def zigzag(number: int) -> bytes:
    """An Avro int/long: zig-zag, then base-128 varint."""
    n = (number << 1) ^ (number >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(text: str) -> bytes:
    raw = text.encode()
    return zigzag(len(raw)) + raw


def millis(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def splice(value: bytes, at: int, old: bytes, new: bytes) -> bytes:
    assert value[at : at + len(old)] == old, "the layout of the envelope changed"
    return value[:at] + new + value[at + len(old) :]


def occurred_at_offset(event: m.RegistryEvent) -> int:
    """Where occurred_at starts: after event_id, two enums, source_province, subject_pin
    and a null subject_legacy_id."""
    assert event.subject_pin is not None and event.subject_legacy_id is None
    return (
        HEADER_SIZE
        + len(avro_string(event.event_id))
        + 2  # event_type and source_registry: one-byte enum indexes
        + len(avro_string(event.source_province))
        + 1  # union branch of subject_pin
        + len(avro_string(event.subject_pin))
        + 1  # union branch of subject_legacy_id (null)
    )


def payload_offset(value: bytes, payload: m.ContractModel) -> int:
    """Where the payload's union branch index is: just before the payload body, at the end."""
    body = Codec(type(payload)).encode(payload)[HEADER_SIZE:]
    assert value.endswith(body)
    return len(value) - len(body) - 1


# --------------------------------------------------------------------------------------------
# valid events for fresh citizens; each kind spoils one


class Citizens:
    """Valid events, each about a citizen of its own (fresh PIN from `serials`)."""

    def __init__(self, serials: Iterator[int], now: datetime, huge: int = ONE_MB) -> None:
        self._serials = serials
        self._sequence = itertools.count(1)
        self.now = now
        self.huge = huge  # size of the "absurdly long" values; the broker caps messages at 1 MB

    def serial(self) -> int:
        return next(self._serials)

    def pin(self, year: int = BIRTH.year, sex: Sex = "F") -> str:
        return make_pin("079", sex, year, self.serial()).value

    def raw_pin(self, prefix: str) -> str:
        """A PIN made of `prefix` (province, gender/century digit, year) and a fresh serial."""
        return f"{prefix}{self.serial():06d}"

    def event(
        self,
        event_type: m.EventType,
        source: m.SourceRegistry,
        payload: Any,
        day: date,
        pin: str | None,
        **envelope: Any,
    ) -> m.RegistryEvent:
        moment = datetime(day.year, day.month, day.day, 3, tzinfo=UTC)  # 10:00 in Vietnam
        fields: dict[str, Any] = {
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "source_registry": source,
            "source_province": "79",
            "subject_pin": pin,
            "occurred_at": moment,
            "recorded_at": moment + timedelta(hours=2),
            "source_sequence": next(self._sequence),
            "correlation_id": str(uuid.uuid4()),
            "payload": payload,
        }
        fields.update(envelope)
        return m.RegistryEvent(**fields)

    def birth(self, pin: str | None = None, **changes: Any) -> m.RegistryEvent:
        payload = m.BirthRegistered(
            full_name=NAME,
            birth_date=BIRTH,
            sex=m.Sex.F,
            birthplace_province="79",
            birthplace_commune="26734",
            ethnicity="Kinh",
            registration_number="KS-102/2003",
        ).model_copy(update=changes)
        return self.event(
            m.EventType.BIRTH_REGISTERED,
            m.SourceRegistry.CIVIL_STATUS,
            payload,
            BIRTH,
            self.pin() if pin is None else pin,
        )

    def death(self, **changes: Any) -> m.RegistryEvent:
        payload = m.DeathRegistered(
            death_date=date(2021, 3, 4), death_place_province="79", registration_number="KT-17"
        ).model_copy(update=changes)
        return self.event(
            m.EventType.DEATH_REGISTERED,
            m.SourceRegistry.CIVIL_STATUS,
            payload,
            date(2021, 3, 4),
            self.pin(1950, "M"),
        )

    def marriage(self, **changes: Any) -> m.RegistryEvent:
        payload = m.MarriageRegistered(
            spouse_pin=self.pin(2001, "M"),
            spouse_full_name="Đặng Văn Khoa",
            marriage_date=date(2024, 2, 10),
            registration_number="KH-8/2024",
        ).model_copy(update=changes)
        return self.event(
            m.EventType.MARRIAGE_REGISTERED,
            m.SourceRegistry.CIVIL_STATUS,
            payload,
            date(2024, 2, 10),
            self.pin(),
        )

    def divorce(self, **changes: Any) -> m.RegistryEvent:
        payload = m.DivorceRecorded(
            divorce_date=date(2025, 9, 1), court_decision_number="QĐ-12/2025"
        ).model_copy(update=changes)
        return self.event(
            m.EventType.DIVORCE_RECORDED,
            m.SourceRegistry.CIVIL_STATUS,
            payload,
            date(2025, 9, 1),
            self.pin(),
        )

    def name_change(self, **changes: Any) -> m.RegistryEvent:
        payload = m.CivilStatusChanged(
            change_kind=m.CivilStatusChangeKind.NAME_CHANGE,
            new_full_name="Lương Thị Huyền My",
            effective_date=date(2022, 1, 10),
            decision_number="QĐ-55/2022",
        ).model_copy(update=changes)
        return self.event(
            m.EventType.CIVIL_STATUS_CHANGED,
            m.SourceRegistry.CIVIL_STATUS,
            payload,
            date(2022, 1, 10),
            self.pin(),
        )

    def move(self, **address: Any) -> m.RegistryEvent:
        fields = {"province_code": "79", "commune_code": "26734", "address_line": "12 Lê Lợi"}
        fields.update(address)
        payload = m.PermanentResidenceRegistered(
            address=m.Address(**fields), effective_date=date(2024, 6, 1)
        )
        return self.event(
            m.EventType.PERMANENT_RESIDENCE_REGISTERED,
            m.SourceRegistry.RESIDENCE,
            payload,
            date(2024, 6, 1),
            self.pin(),
        )

    def temporary(self, **changes: Any) -> m.RegistryEvent:
        payload = m.TemporaryResidenceRegistered(
            address=m.Address(province_code="48", commune_code="20194", address_line="3 Bạch Đằng"),
            effective_date=date(2024, 6, 1),
            valid_until=date(2026, 6, 1),
        ).model_copy(update=changes)
        return self.event(
            m.EventType.TEMPORARY_RESIDENCE_REGISTERED,
            m.SourceRegistry.RESIDENCE,
            payload,
            date(2024, 6, 1),
            self.pin(),
        )

    def deregistration(self, **changes: Any) -> m.RegistryEvent:
        payload = m.ResidenceDeregistered(
            residence_kind=m.ResidenceKind.TEMPORARY,
            effective_date=date(2025, 1, 2),
            reason="Hết thời hạn tạm trú",
        ).model_copy(update=changes)
        return self.event(
            m.EventType.RESIDENCE_DEREGISTERED,
            m.SourceRegistry.RESIDENCE,
            payload,
            date(2025, 1, 2),
            self.pin(),
        )

    def card(self, **changes: Any) -> m.RegistryEvent:
        pin = self.pin()
        card = m.IdCard(
            card_number=pin,
            issue_date=date(2021, 8, 1),
            expiry_date=date(2028, 5, 17),
            issuing_authority="Cục Cảnh sát quản lý hành chính về trật tự xã hội",
        ).model_copy(update=changes)
        return self.event(
            m.EventType.ID_CARD_ISSUED,
            m.SourceRegistry.ID_CARD,
            m.IdCardIssued(card=card),
            date(2021, 8, 1),
            pin,
        )

    def sector_record(self, *, with_pin: bool = True, **changes: Any) -> m.RegistryEvent:
        """A social insurance record; without a PIN it is for the validator to match."""
        payload = m.SectorRecordRegistered(
            record_number="7912345678",
            full_name=NAME,
            birth_date=BIRTH,
            sex=m.Sex.F,
            birthplace_province="79",
            hometown_province="52",
            legacy_id="023456789",
        ).model_copy(update=changes)
        return self.event(
            m.EventType.SECTOR_RECORD_REGISTERED,
            m.SourceRegistry.SOCIAL_INSURANCE,
            payload,
            date(2024, 3, 1),
            self.pin() if with_pin else None,
        )


def spoil(event: m.RegistryEvent, **payload: Any) -> m.RegistryEvent:
    return event.model_copy(update={"payload": event.payload.model_copy(update=payload)})


def envelope(event: m.RegistryEvent, **fields: Any) -> m.RegistryEvent:
    return event.model_copy(update=fields)


Sent = tuple[bytes | None, bytes | None]


def sent(event: m.RegistryEvent) -> Sent:
    """As a registry publishes it: keyed by the subject PIN."""
    assert event.subject_pin is not None
    return event.subject_pin.encode(), EVENT_CODEC.encode(event)


def keyed(key: bytes | None, event: m.RegistryEvent) -> Sent:
    return key, EVENT_CODEC.encode(event)


def with_pin(c: Citizens, pin: str) -> Sent:
    """A valid birth whose subject PIN (and key) is `pin`."""
    return sent(c.birth(pin=pin))


def spoil_card(event: m.RegistryEvent, **card: Any) -> m.RegistryEvent:
    assert isinstance(event.payload, m.IdCardIssued)
    return spoil(event, card=event.payload.card.model_copy(update=card))


def valid_bytes(c: Citizens) -> tuple[bytes | None, bytes]:
    key, value = sent(c.birth())
    assert value is not None
    return key, value


# --------------------------------------------------------------------------------------------
# the bytes-level kinds


def confluent_wire_format(c: Citizens) -> Sent:
    key, value = valid_bytes(c)
    return key, b"\x00" + (42).to_bytes(4, "big") + value[HEADER_SIZE:]


def truncated(c: Citizens) -> Sent:
    key, value = valid_bytes(c)
    return key, value[:-7]


def header_only(c: Citizens) -> Sent:
    key, value = valid_bytes(c)
    return key, value[:HEADER_SIZE]


def trailing_bytes(c: Citizens) -> Sent:
    key, value = valid_bytes(c)
    return key, value + b"\x00\x00"


def other_record_type(c: Citizens) -> Sent:
    pin = c.pin()
    conflict = m.MergeConflict(
        pin=pin,
        event_id=str(uuid.uuid4()),
        event_type=m.EventType.BIRTH_REGISTERED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        conflict_code="BIRTH_ALREADY_REGISTERED",
        message="a birth is already registered",
        occurred_at=datetime(2003, 5, 17, tzinfo=UTC),
        detected_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    return pin.encode(), Codec(m.MergeConflict).encode(conflict)


def unknown_fingerprint(c: Citizens) -> Sent:
    key, value = valid_bytes(c)
    return key, MAGIC + bytes.fromhex("0123456789abcdef") + value[HEADER_SIZE:]


def enum_index_out_of_range(c: Citizens) -> Sent:
    event = c.birth()
    key, value = sent(event)
    assert value is not None
    at = HEADER_SIZE + len(avro_string(event.event_id))
    return key, splice(value, at, zigzag(0), zigzag(99))  # 0: BIRTH_REGISTERED


def union_branch_out_of_range(c: Citizens) -> Sent:
    event = c.birth()
    key, value = sent(event)
    assert value is not None
    return key, splice(value, payload_offset(value, event.payload), zigzag(0), zigzag(42))


def negative_string_length(c: Citizens) -> Sent:
    event = c.birth()
    key, value = sent(event)
    assert value is not None
    length = zigzag(len(event.event_id.encode()))
    return key, splice(value, HEADER_SIZE, length, zigzag(-3))


def bytes_in_name(c: Citizens, new: Callable[[bytes], bytes]) -> Sent:
    key, value = valid_bytes(c)
    assert value.count(NAME.encode()) == 1
    at = value.index(NAME.encode())
    original = NAME.encode()
    spoilt = new(original)
    assert len(spoilt) == len(original)  # the Avro length prefix stays right
    return key, splice(value, at, original, spoilt)


def timestamp_beyond_9999(c: Citizens) -> Sent:
    event = c.birth()
    key, value = sent(event)
    assert value is not None
    old = zigzag(millis(event.occurred_at))
    return key, splice(value, occurred_at_offset(event), old, zigzag(2**62))


def date_beyond_9999(c: Citizens) -> Sent:
    event = c.birth()
    key, value = sent(event)
    assert value is not None and isinstance(event.payload, m.BirthRegistered)
    # birth_date follows full_name in the payload body.
    at = payload_offset(value, event.payload) + 1 + len(avro_string(event.payload.full_name))
    days = (event.payload.birth_date - date(1970, 1, 1)).days
    return key, splice(value, at, zigzag(days), zigzag(10**9))


# --------------------------------------------------------------------------------------------
# the catalogue of kinds


@dataclass(frozen=True)
class Kind:
    name: str
    reason: str
    build: Callable[[Citizens], Sent]


def _future(c: Citizens, days: float) -> datetime:
    return c.now + timedelta(days=days)


def _arabic_indic(text: str) -> str:
    return text.translate({ord(d): 0x0660 + int(d) for d in "0123456789"})


def _fullwidth(text: str) -> str:
    return text.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})


KINDS: tuple[Kind, ...] = (
    # ---- decode: the value is not a readable RegistryEvent ---------------------------------
    Kind("tombstone_value", "EMPTY_VALUE", lambda c: (c.pin().encode(), None)),
    Kind("zero_byte_value", "EMPTY_VALUE", lambda c: (c.pin().encode(), b"")),
    Kind("value_shorter_than_header", "BAD_MAGIC", lambda c: (c.pin().encode(), MAGIC + b"\x01")),
    Kind("confluent_wire_format", "BAD_MAGIC", confluent_wire_format),
    Kind(
        "json_instead_of_avro",
        "BAD_MAGIC",
        lambda c: (None, json.dumps(event_to_json(c.birth())).encode()),
    ),
    Kind("unknown_writer_schema_fingerprint", "UNKNOWN_SCHEMA", unknown_fingerprint),
    Kind("other_record_type_on_the_topic", "UNKNOWN_SCHEMA", other_record_type),
    Kind("truncated_avro", "AVRO_CORRUPT", truncated),
    Kind("header_without_body", "AVRO_CORRUPT", header_only),
    Kind("enum_index_out_of_range", "AVRO_CORRUPT", enum_index_out_of_range),
    Kind("union_branch_out_of_range", "AVRO_CORRUPT", union_branch_out_of_range),
    Kind("negative_string_length", "AVRO_CORRUPT", negative_string_length),
    Kind("trailing_bytes", "AVRO_TRAILING_BYTES", trailing_bytes),
    Kind(
        "invalid_utf8_in_name",
        "AVRO_INVALID_UTF8",
        lambda c: bytes_in_name(c, lambda raw: b"\xff" + raw[1:]),
    ),
    Kind(
        "utf8_encoded_surrogate_in_name",
        "AVRO_INVALID_UTF8",
        lambda c: bytes_in_name(c, lambda raw: b"\xed\xa0\x80" + raw[3:]),
    ),
    Kind(
        "overlong_utf8_in_name",
        "AVRO_INVALID_UTF8",
        lambda c: bytes_in_name(c, lambda raw: b"\xc0\xaf" + raw[2:]),
    ),
    Kind("timestamp_beyond_year_9999", "AVRO_DATE_OUT_OF_RANGE", timestamp_beyond_9999),
    Kind("date_beyond_year_9999", "AVRO_DATE_OUT_OF_RANGE", date_beyond_9999),
    # ---- message key and subject PIN -------------------------------------------------------
    Kind("key_missing", "KEY_MISSING", lambda c: keyed(None, c.birth())),
    Kind("key_empty", "KEY_MISSING", lambda c: keyed(b"", c.birth())),
    Kind("key_is_another_pin", "KEY_PIN_MISMATCH", lambda c: keyed(c.pin().encode(), c.birth())),
    Kind(
        "key_with_trailing_newline",
        "KEY_PIN_MISMATCH",
        lambda c: (lambda e: keyed((e.subject_pin or "").encode() + b"\n", e))(c.birth()),
    ),
    Kind(
        "move_without_pin",
        "PIN_REQUIRED",
        lambda c: keyed(None, envelope(c.move(), subject_pin=None)),
    ),
    Kind("pin_with_a_letter", "PIN_NOT_12_DIGITS", lambda c: with_pin(c, c.pin()[:-1] + "X")),
    Kind("pin_of_11_digits", "PIN_NOT_12_DIGITS", lambda c: with_pin(c, c.pin()[:-1])),
    Kind("pin_of_13_digits", "PIN_NOT_12_DIGITS", lambda c: with_pin(c, c.pin() + "7")),
    Kind(
        "pin_in_arabic_indic_digits",
        "PIN_NOT_12_DIGITS",
        lambda c: with_pin(c, _arabic_indic(c.pin())),
    ),
    Kind(
        "pin_in_fullwidth_digits", "PIN_NOT_12_DIGITS", lambda c: with_pin(c, _fullwidth(c.pin()))
    ),
    Kind("pin_padded_with_spaces", "PIN_NOT_12_DIGITS", lambda c: with_pin(c, f" {c.pin()} ")),
    Kind(
        "pin_province_never_existed",
        "PIN_UNKNOWN_PROVINCE",
        lambda c: with_pin(c, c.raw_pin("099303")),
    ),
    Kind(
        "pin_gender_century_digit_unassigned",
        "PIN_BAD_GENDER_CENTURY_DIGIT",
        lambda c: with_pin(c, c.raw_pin("079703")),
    ),
    Kind(
        "pin_century_contradicts_birth_date",
        "PIN_CENTURY_GENDER_MISMATCH",
        lambda c: with_pin(c, c.raw_pin("079103")),  # 1: a girl born in the 1900s
    ),
    Kind(
        "pin_gender_contradicts_sex",
        "PIN_CENTURY_GENDER_MISMATCH",
        lambda c: with_pin(c, c.raw_pin("079203")),  # 2: a boy born in the 2000s
    ),
    Kind(
        "pin_birth_year_contradicts_birth_date",
        "PIN_BIRTH_YEAR_MISMATCH",
        lambda c: with_pin(c, c.raw_pin("079304")),
    ),
    # ---- event type and source -------------------------------------------------------------
    Kind(
        "event_type_unknown",
        "EVENT_TYPE_UNKNOWN",
        lambda c: sent(envelope(c.birth(), event_type=m.EventType.UNKNOWN)),
    ),
    Kind(
        "payload_does_not_match_event_type",
        "PAYLOAD_TYPE_MISMATCH",
        lambda c: sent(envelope(c.birth(), event_type=m.EventType.DEATH_REGISTERED)),
    ),
    Kind(
        "source_registry_unknown",
        "SOURCE_UNKNOWN",
        lambda c: sent(envelope(c.birth(), source_registry=m.SourceRegistry.UNKNOWN)),
    ),
    Kind(
        "residence_registry_publishes_a_birth",
        "SOURCE_NOT_AUTHORITATIVE",
        lambda c: sent(envelope(c.birth(), source_registry=m.SourceRegistry.RESIDENCE)),
    ),
    Kind(
        "social_insurance_publishes_a_death",
        "SOURCE_NOT_AUTHORITATIVE",
        lambda c: sent(envelope(c.death(), source_registry=m.SourceRegistry.SOCIAL_INSURANCE)),
    ),
    # ---- places ----------------------------------------------------------------------------
    Kind(
        "source_province_never_existed",
        "SOURCE_PROVINCE_UNKNOWN",
        lambda c: sent(envelope(c.birth(), source_province="00")),
    ),
    Kind(
        "birthplace_province_never_existed",
        "BIRTHPLACE_PROVINCE_UNKNOWN",
        lambda c: sent(spoil(c.birth(), birthplace_province="99")),
    ),
    Kind(
        "death_place_province_never_existed",
        "DEATH_PLACE_PROVINCE_UNKNOWN",
        lambda c: sent(spoil(c.death(), death_place_province="65")),
    ),
    Kind(
        "address_province_never_existed",
        "ADDRESS_PROVINCE_UNKNOWN",
        lambda c: sent(c.move(province_code="099")),
    ),
    Kind(
        "commune_code_with_a_letter",
        "COMMUNE_CODE_MALFORMED",
        lambda c: sent(c.move(commune_code="267A4")),
    ),
    Kind(
        "commune_code_of_6_digits",
        "COMMUNE_CODE_MALFORMED",
        lambda c: sent(c.move(commune_code="267340")),
    ),
    Kind(
        "birthplace_commune_of_4_digits",
        "COMMUNE_CODE_MALFORMED",
        lambda c: sent(spoil(c.birth(), birthplace_commune="2673")),
    ),
    # ---- dates and times -------------------------------------------------------------------
    Kind(
        "occurred_in_future",
        "OCCURRED_IN_FUTURE",
        lambda c: sent(envelope(c.move(), occurred_at=_future(c, 1), recorded_at=_future(c, 1.01))),
    ),
    Kind(
        "recorded_in_future",
        "RECORDED_IN_FUTURE",
        lambda c: sent(envelope(c.move(), occurred_at=_future(c, -0.1), recorded_at=_future(c, 1))),
    ),
    Kind(
        "recorded_before_occurred",
        "RECORDED_BEFORE_OCCURRED",
        lambda c: (lambda e: sent(envelope(e, recorded_at=e.occurred_at - timedelta(days=1))))(
            c.move()
        ),
    ),
    Kind(
        "birth_date_in_future",
        "DATE_IN_FUTURE",
        lambda c: sent(
            envelope(
                spoil(c.birth(), birth_date=_future(c, 30).date()),
                occurred_at=_future(c, -0.1),
                recorded_at=_future(c, -0.05),
            )
        ),
    ),
    Kind(
        "temporary_residence_effective_in_future",
        "DATE_IN_FUTURE",
        lambda c: sent(
            spoil(c.temporary(), effective_date=_future(c, 60).date(), valid_until=None)
        ),
    ),
    Kind(
        "occurred_before_1900",
        "DATE_TOO_EARLY",
        lambda c: sent(
            envelope(
                c.move(),
                occurred_at=datetime(1899, 12, 31, 3, tzinfo=UTC),
                recorded_at=datetime(1899, 12, 31, 5, tzinfo=UTC),
            )
        ),
    ),
    Kind(
        "card_issued_before_1900",
        "DATE_TOO_EARLY",
        lambda c: sent(spoil_card(c.card(), issue_date=date(1899, 6, 1))),
    ),
    Kind(
        "death_before_the_birth_year_in_the_pin",
        "DEATH_BEFORE_BIRTH",
        lambda c: sent(spoil(c.death(), death_date=date(1949, 12, 1))),
    ),
    Kind(
        "marriage_before_the_birth_year_in_the_pin",
        "DATE_BEFORE_BIRTH",
        lambda c: sent(spoil(c.marriage(), marriage_date=date(2002, 1, 1))),
    ),
    Kind(
        "card_expires_before_issue",
        "EXPIRY_BEFORE_ISSUE",
        lambda c: sent(spoil_card(c.card(), expiry_date=date(2020, 1, 1))),
    ),
    Kind(
        "temporary_residence_ends_before_it_starts",
        "VALID_UNTIL_BEFORE_EFFECTIVE",
        lambda c: sent(spoil(c.temporary(), valid_until=date(2024, 5, 31))),
    ),
    # ---- names -----------------------------------------------------------------------------
    Kind(
        "name_with_nul_character",
        "NAME_CONTROL_CHARS",
        lambda c: sent(spoil(c.birth(), full_name="Lương\x00 Thị Huyền Trang")),
    ),
    Kind(
        "name_with_bidi_override",
        "NAME_CONTROL_CHARS",
        lambda c: sent(spoil(c.birth(), full_name="Lương Thị \u202eHuyền Trang")),
    ),
    Kind(
        "name_with_zero_width_space",
        "NAME_CONTROL_CHARS",
        lambda c: sent(spoil(c.birth(), full_name="Lương\u200b Thị Huyền Trang")),
    ),
    Kind(
        "new_name_with_newline",
        "NAME_CONTROL_CHARS",
        lambda c: sent(spoil(c.name_change(), new_full_name="Lương Thị\nHuyền My")),
    ),
    Kind(
        "name_only_whitespace",
        "NAME_EMPTY",
        lambda c: sent(spoil(c.birth(), full_name=" \u3000  ")),
    ),
    Kind(
        "absurdly_long_name",
        "NAME_TOO_LONG",
        lambda c: sent(spoil(c.birth(), full_name=("Lương Thị Huyền Trang " * c.huge)[: c.huge])),
    ),
    Kind(
        "name_with_digits",
        "NAME_BAD_CHARACTERS",
        lambda c: sent(spoil(c.birth(), full_name="Lương Thị Huyền Trang 2")),
    ),
    Kind(
        "spouse_name_only_punctuation",
        "NAME_BAD_CHARACTERS",
        lambda c: sent(spoil(c.marriage(), spouse_full_name="???")),
    ),
    # ---- free text and ids -----------------------------------------------------------------
    Kind(
        "address_line_of_10k_characters",
        "FIELD_TOO_LONG",
        lambda c: sent(c.move(address_line="12 Lê Lợi " * 1000)),
    ),
    Kind(
        "event_id_of_1000_characters",
        "FIELD_TOO_LONG",
        lambda c: sent(envelope(c.birth(), event_id="e" * 1000)),
    ),
    Kind(
        "absurdly_long_correlation_id",
        "FIELD_TOO_LONG",
        lambda c: sent(envelope(c.birth(), correlation_id="c" * c.huge)),
    ),
    Kind("event_id_empty", "FIELD_EMPTY", lambda c: sent(envelope(c.birth(), event_id=""))),
    Kind(
        "registration_number_only_spaces",
        "FIELD_EMPTY",
        lambda c: sent(spoil(c.birth(), registration_number="   ")),
    ),
    Kind(
        "registration_number_with_bell_character",
        "CONTROL_CHARACTERS",
        lambda c: sent(spoil(c.birth(), registration_number="KS-\x07102/2003")),
    ),
    Kind(
        "deregistration_reason_with_terminal_escape",
        "CONTROL_CHARACTERS",
        lambda c: sent(spoil(c.deregistration(), reason="\x1b[2JHết thời hạn")),
    ),
    Kind(
        "ethnicity_with_byte_order_mark",
        "CONTROL_CHARACTERS",
        lambda c: sent(spoil(c.birth(), ethnicity="\ufeffKinh")),
    ),
    Kind(
        "nationality_of_three_letters",
        "NATIONALITY_MALFORMED",
        lambda c: sent(spoil(c.birth(), nationality="VNM")),
    ),
    Kind(
        "card_number_with_a_letter",
        "CARD_NUMBER_MALFORMED",
        lambda c: sent(spoil_card(c.card(), card_number="0793030A0123")),
    ),
    # ---- other people's PINs ---------------------------------------------------------------
    Kind(
        "father_pin_malformed",
        "FATHER_PIN_INVALID",
        lambda c: sent(spoil(c.birth(), father_pin="123")),
    ),
    Kind(
        "father_pin_is_the_child",
        "FATHER_PIN_IS_SUBJECT",
        lambda c: (lambda e: sent(spoil(e, father_pin=e.subject_pin)))(c.birth()),
    ),
    Kind(
        "mother_pin_in_other_script",
        "MOTHER_PIN_INVALID",
        lambda c: sent(spoil(c.birth(), mother_pin=_arabic_indic(c.pin(1980, "F")))),
    ),
    Kind(
        "mother_pin_is_the_child",
        "MOTHER_PIN_IS_SUBJECT",
        lambda c: (lambda e: sent(spoil(e, mother_pin=e.subject_pin)))(c.birth()),
    ),
    Kind(
        "spouse_pin_unknown_province",
        "SPOUSE_PIN_INVALID",
        lambda c: sent(spoil(c.marriage(), spouse_pin=c.raw_pin("099201"))),
    ),
    Kind(
        "divorce_spouse_pin_is_the_subject",
        "SPOUSE_PIN_IS_SUBJECT",
        lambda c: (lambda e: sent(spoil(e, spouse_pin=e.subject_pin)))(c.divorce()),
    ),
    Kind(
        "correction_previous_pin_malformed",
        "PREVIOUS_PIN_INVALID",
        lambda c: sent(spoil(c.name_change(), previous_pin="07920300012X")),
    ),
    Kind(
        "correction_previous_pin_is_the_subject",
        "PREVIOUS_PIN_IS_SUBJECT",
        lambda c: (lambda e: sent(spoil(e, previous_pin=e.subject_pin)))(c.name_change()),
    ),
    # ---- aliases ---------------------------------------------------------------------------
    Kind(
        "subject_legacy_id_of_five_digits",
        "LEGACY_ID_MALFORMED",
        lambda c: keyed(b"12345", envelope(c.move(), subject_pin=None, subject_legacy_id="12345")),
    ),
    Kind(
        "subject_named_by_an_unknown_cmnd",
        "ALIAS_UNKNOWN",
        lambda c: keyed(
            b"023456789", envelope(c.move(), subject_pin=None, subject_legacy_id="023456789")
        ),
    ),
    Kind(
        "card_replacing_a_malformed_cmnd",
        "LEGACY_ID_MALFORMED",
        lambda c: sent(spoil(c.card(), previous_id_number="02345678A")),
    ),
    # ---- sector records (social insurance, civil servants) ---------------------------------
    Kind(
        "sector_record_from_the_residence_registry",
        "SOURCE_NOT_AUTHORITATIVE",
        lambda c: sent(envelope(c.sector_record(), source_registry=m.SourceRegistry.RESIDENCE)),
    ),
    Kind(
        "sector_record_hometown_province_never_existed",
        "HOMETOWN_PROVINCE_UNKNOWN",
        lambda c: sent(spoil(c.sector_record(), hometown_province="99")),
    ),
    Kind(
        "sector_record_without_pin_with_a_cmnd_of_ten_digits",
        "LEGACY_ID_MALFORMED",
        lambda c: keyed(
            b"7912345678", spoil(c.sector_record(with_pin=False), legacy_id="0234567890")
        ),
    ),
    Kind(
        "sector_record_without_pin_with_digits_in_the_name",
        "NAME_BAD_CHARACTERS",
        lambda c: keyed(None, spoil(c.sector_record(with_pin=False), full_name="Lương Thị 2")),
    ),
    # ---- civil-status changes --------------------------------------------------------------
    Kind(
        "change_kind_unknown",
        "CHANGE_KIND_UNKNOWN",
        lambda c: sent(spoil(c.name_change(), change_kind=m.CivilStatusChangeKind.UNKNOWN)),
    ),
    Kind(
        "name_change_without_a_name",
        "CHANGE_WITHOUT_VALUE",
        lambda c: sent(spoil(c.name_change(), new_full_name=None)),
    ),
)


@dataclass(frozen=True)
class BadMessage:
    kind: str
    reason: str
    key: bytes | None
    value: bytes | None


def bad_messages(citizens: Citizens) -> list[BadMessage]:
    """Every kind once, as the bytes that go on the registry-events topic."""
    messages = []
    for kind in KINDS:
        key, value = kind.build(citizens)
        messages.append(BadMessage(kind.name, kind.reason, key, value))
    return messages


# --------------------------------------------------------------------------------------------
# running the real validator


class RecordingProducer:
    """Stands in for the broker: keeps what a step sends."""

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send_all(self, messages: Sequence[OutboundMessage], timeout: float = 30.0) -> None:
        self.sent.extend(messages)


SETTINGS = Settings()
STEP = ValidatorStep(
    SETTINGS,
    producer=RecordingProducer(),
    allocator=InMemoryPinAllocator(),
    aliases=InMemoryAliasDirectory(),
    matching=InMemoryMatchingStore(),
)  # type: ignore[arg-type]
TOPICS = SETTINGS.topics


def inbound(key: bytes | None, value: bytes | None, offset: int = 17) -> InboundMessage:
    return InboundMessage(TOPICS.registry_events, 3, offset, key, value)


def assert_dead_letter(
    output: OutboundMessage, key: bytes | None, value: bytes | None, reason: str, offset: int
) -> m.DeadLetter:
    assert output.topic == TOPICS.dead_letters
    assert output.key == key
    assert ("popsync.reason", reason.encode()) in output.headers
    letter: m.DeadLetter = DEAD_LETTER_CODEC.decode(output.value)
    assert letter.reason_code == reason
    assert letter.stage == "validator"
    assert letter.original_key == key
    assert letter.original_value == value
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        TOPICS.registry_events,
        3,
        offset,
    )
    return letter


def assert_no_personal_data(text: str, key: bytes | None) -> None:
    assert text.strip()
    assert "Lương" not in text and "Trang" not in text
    assert not re.search(r"[0-9]{12}", text)
    assert "***" not in text  # not even a masked PIN
    if key:
        assert key.decode(errors="replace").strip() not in text


UNIT_MESSAGES = bad_messages(Citizens(itertools.count(900_000), NOW))


@pytest.mark.parametrize("bad", UNIT_MESSAGES, ids=[bad.kind for bad in UNIT_MESSAGES])
def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason(bad: BadMessage) -> None:
    routed = STEP.route(inbound(bad.key, bad.value), NOW)
    assert routed.reason == bad.reason
    letter = assert_dead_letter(routed.output, bad.key, bad.value, bad.reason, 17)
    assert bad.reason in REASONS
    assert REASONS[bad.reason].outcome == "dead_letter"
    assert_no_personal_data(letter.message, bad.key)


def test_the_catalogue_has_at_least_40_distinct_kinds() -> None:
    names = [kind.name for kind in KINDS]
    assert len(set(names)) == len(names) >= 40
    # Distinct inputs too: no two kinds are the same bytes.
    assert len({(b.key, b.value) for b in UNIT_MESSAGES}) == len(UNIT_MESSAGES)


def test_every_catalogue_entry_is_produced_by_a_kind_or_explained() -> None:
    produced = {kind.reason for kind in KINDS}
    assert produced <= set(REASONS)
    assert not produced & set(NOT_CONSTRUCTIBLE)
    assert produced | set(NOT_CONSTRUCTIBLE) == set(REASONS)


def test_a_batch_of_every_kind_and_good_events_gives_one_output_per_input_in_order() -> None:
    citizens = Citizens(itertools.count(910_000), NOW)
    expected: list[str | None] = []  # reason, or None for a good event
    batch: list[InboundMessage] = []
    for i, bad in enumerate(bad_messages(citizens)):
        if i % 7 == 0:  # good ones in between, including a legacy province, which is mapped
            good = citizens.move(province_code="74") if i % 2 else citizens.birth()
            batch.append(inbound(*sent(good), offset=len(batch)))
            expected.append(None)
        batch.append(inbound(bad.key, bad.value, offset=len(batch)))
        expected.append(bad.reason)
    producer = RecordingProducer()
    step = ValidatorStep(  # type: ignore[arg-type]
        SETTINGS,
        producer=producer,
        allocator=InMemoryPinAllocator(),
        aliases=InMemoryAliasDirectory(),
        matching=InMemoryMatchingStore(),
        clock=lambda: NOW,
    )

    asyncio.run(step(batch))

    assert len(producer.sent) == len(batch)
    for message, reason, output in zip(batch, expected, producer.sent, strict=True):
        if reason is None:
            assert output.topic == TOPICS.validated_events
            assert output.key == message.key
            event = EVENT_CODEC.decode(output.value)
            assert event.subject_pin is not None and event.subject_pin.encode() == message.key
        else:
            assert_dead_letter(output, message.key, message.value, reason, message.offset)
    assert expected.count(None) >= 10


def test_an_unexpected_error_is_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> m.RegistryEvent:
        raise ZeroDivisionError(f"bug while checking {NAME}")  # a careless message

    monkeypatch.setattr(validator_app, "check_event", broken)
    key, value = sent(Citizens(itertools.count(920_000), NOW).birth())
    routed = STEP.route(inbound(key, value), NOW)
    assert routed.reason == "INTERNAL_ERROR"
    letter = assert_dead_letter(routed.output, key, value, "INTERNAL_ERROR", 17)
    assert letter.message == "ZeroDivisionError"  # the type only: no data from the exception
    assert REASONS["INTERNAL_ERROR"].retryable


def test_a_datum_the_models_refuse_is_a_contract_violation_not_a_crash() -> None:
    # No Avro bytes get here (NOT_CONSTRUCTIBLE); a datum that did, even in the payload,
    # would still be a DecodeError with its code, not a pydantic error escaping the codec.
    datum = to_avro_datum(Citizens(itertools.count(925_000), NOW).birth())
    name, body = datum["payload"]
    datum["payload"] = (name, {**body, "birth_date": "17/05/2003"})
    with pytest.raises(DecodeError) as info:
        from_avro_datum(m.RegistryEvent, datum)
    assert info.value.reason == "CONTRACT_VIOLATION"
    assert "birth_date" in str(info.value) and "17/05/2003" not in str(info.value)


def test_no_mutation_of_the_bytes_crashes_the_validator() -> None:
    """Random damage to valid values: always one dead letter with a catalogued, permanent
    decode or rule reason, never an exception and never INTERNAL_ERROR."""
    citizens = Citizens(itertools.count(960_000), NOW)
    values = [
        value
        for event in (citizens.birth(), citizens.card(), citizens.move(), citizens.marriage())
        if (value := EVENT_CODEC.encode(event))
    ]
    rng = random.Random(20251123)
    seen: set[str | None] = set()
    for _ in range(3000):
        damaged = bytearray(rng.choice(values))
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(HEADER_SIZE, len(damaged))] = rng.randrange(256)
        routed = STEP.route(inbound(b"079303000001", bytes(damaged)), NOW)
        seen.add(routed.reason)
        assert routed.reason is None or routed.reason in REASONS
        assert routed.reason != "INTERNAL_ERROR"
    assert {"AVRO_CORRUPT", "AVRO_INVALID_UTF8"} <= seen


# --------------------------------------------------------------------------------------------
# the kinds that are conflicts, not dead letters


def validated(event: m.RegistryEvent) -> m.RegistryEvent:
    routed = STEP.route(inbound(*sent(event)), NOW)
    assert routed.reason is None, routed.reason
    assert routed.event is not None
    return routed.event


def test_duplicate_event_id_with_different_content_is_a_conflict() -> None:
    citizens = Citizens(itertools.count(930_000), NOW)
    first = citizens.birth()
    reused = spoil(first, registration_number="KS-999/2003")  # same event id, other content
    assert reused.event_id == first.event_id
    accepted, second = validated(first), validated(reused)  # each one is valid on its own
    assert first.subject_pin is not None

    applied = apply_event(CitizenState(pin=first.subject_pin), accepted)
    assert isinstance(applied, Applied)
    outcome = apply_event(applied.state, second)

    assert isinstance(outcome, Rejected)
    code = outcome.conflict.code
    assert code == "DUPLICATE_EVENT_ID_DIFFERENT_CONTENT"
    assert CONFLICTS[code].outcome == "conflict" and CONFLICTS[code].stage == "merge"
    assert isinstance(apply_event(applied.state, accepted), Duplicate)  # a true re-send
    assert applied.state.events[first.event_id] == accepted  # the first one stays


def test_death_before_the_birth_date_in_the_birth_year_is_a_conflict() -> None:
    citizens = Citizens(itertools.count(940_000), NOW)
    born = citizens.birth()  # 17 May 2003
    assert born.subject_pin is not None
    death = envelope(
        citizens.death(),
        subject_pin=born.subject_pin,
        occurred_at=datetime(2003, 6, 2, 3, tzinfo=UTC),
        recorded_at=datetime(2003, 6, 2, 5, tzinfo=UTC),
    )
    death = spoil(death, death_date=date(2003, 2, 1))  # same year as the PIN: valid alone
    events = [validated(born), validated(death)]

    _, conflicts = fold(born.subject_pin, events)

    assert {k: c.code for k, c in conflicts.items()} == {death.event_id: "DEATH_BEFORE_BIRTH"}
    assert CONFLICTS["DEATH_BEFORE_BIRTH"].outcome == "conflict"


# --------------------------------------------------------------------------------------------
# the catalogue itself


RETRYABLE = {
    "UNKNOWN_SCHEMA",
    "CONTRACT_VIOLATION",
    "EVENT_TYPE_UNKNOWN",
    "SOURCE_UNKNOWN",
    "CHANGE_KIND_UNKNOWN",
    "ALIAS_UNKNOWN",
    "OCCURRED_IN_FUTURE",
    "RECORDED_IN_FUTURE",
    "DATE_IN_FUTURE",
    "INTERNAL_ERROR",
}


def test_retryable_reasons_are_exactly_those_the_same_bytes_can_pass_later() -> None:
    assert {code for code in REASONS if is_retryable(code)} == RETRYABLE
    assert not is_retryable("NO_SUCH_CODE")  # unknown: permanent, never replayed on a guess
    assert not any(reason.retryable for reason in CONFLICTS.values())


def test_a_future_date_passes_once_its_time_has_come() -> None:
    # Why *_IN_FUTURE is retryable: the very same bytes, checked later, are accepted.
    citizens = Citizens(itertools.count(950_000), NOW)
    bad = {b.kind: b for b in bad_messages(citizens)}
    for kind in (
        "occurred_in_future",
        "recorded_in_future",
        "temporary_residence_effective_in_future",
    ):
        message = inbound(bad[kind].key, bad[kind].value)
        assert STEP.route(message, NOW).reason == bad[kind].reason
        assert STEP.route(message, NOW + timedelta(days=61)).reason is None


def test_each_entry_is_well_formed() -> None:
    for catalogue, outcome in ((REASONS, "dead_letter"), (CONFLICTS, "conflict")):
        for code, reason in catalogue.items():
            assert reason.code == code
            assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", code)
            assert reason.outcome == outcome
            assert reason.stage in ("decode", "rules", "worker", "merge")
            assert reason.description and "\n" not in reason.description


# Modules that raise dead-letter reasons: the codec (and the JSON form of the contract), the
# rules with pin and names, and the workers' own fallbacks.
RAISING_MODULES = (
    "popsync/contract/codec.py",
    "popsync/contract/json_form.py",
    "popsync/domain/rules.py",
    "popsync/domain/pin.py",
    "popsync/domain/names.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/app.py")),
)
RAISERS = {"RuleViolation", "DecodeError", "PinError", "InvalidName"}
CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"))


def _code_literals(tree: ast.Module) -> set[str]:
    """Every string literal shaped like a reason code, except the names in `__all__`."""
    exported: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported |= {id(c) for c in ast.walk(node.value)}
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and CODE.fullmatch(node.value)
        and id(node) not in exported
    }


def test_every_code_in_the_raising_modules_is_catalogued() -> None:
    for path in RAISING_MODULES:
        assert _code_literals(_tree(path)) <= set(REASONS), path


def test_every_catalogued_code_is_raised_somewhere() -> None:
    literals = set().union(*(_code_literals(_tree(path)) for path in RAISING_MODULES))
    assert set(REASONS) <= literals
    merge = _code_literals(_tree("popsync/domain/merge.py"))
    assert set(CONFLICTS) <= merge


def test_no_reason_code_is_built_at_run_time() -> None:
    """Codes are literals (or names of literals, or a caught error's `.reason` passed on), so
    the two tests above see every one of them."""
    for path in RAISING_MODULES:
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in RAISERS and node.args:
                code = node.args[0]
            elif name == "_reject" and len(node.args) > 1:  # the validator's dead letter
                code = node.args[1]
            else:
                continue
            passed_on = isinstance(code, ast.Attribute) and code.attr == "reason"
            assert isinstance(code, ast.Constant | ast.Name) or passed_on, (
                f"{path}:{node.lineno}: reason code built at run time"
            )
