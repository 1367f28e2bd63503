"""Builders of the events and records the tests share; each test module imports them from
here, never from another test module (tests/unit/test_tests_layout.py).

- `birth_event`: the one birth of the unit tests, field by field; `first_release_birth`, the
  same birth as the first released schema wrote it.
- `story_*`: one citizen's life for the merge rules (`PIN`, event ids "ev-<n>").
- `Citizens` and `bad_messages`: valid events about fresh citizens, and the catalogue of bad
  input built from them (`popsync.domain.reasons`), as the bytes and headers a registry would
  send: signed by its development key (`tests.signing`) unless the kind is about the signature.
- `birth`, `move`, ... `publish`, `citizen`: events about a given PIN for the real pipeline,
  and reading what it did with them.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from popsync.contract import models as m
from popsync.contract.codec import HEADER_SIZE, MAGIC, Codec
from popsync.contract.json_form import event_to_json
from popsync.dev.publishers import dev_signer
from popsync.domain.pin import make_pin
from popsync.topology import MAX_EVENT_BYTES
from popsync.trust.signing import KEY_ID_HEADER, SIGNATURE_HEADER, Signer
from tests.polling import read_until
from tests.signing import signature_headers

if TYPE_CHECKING:
    from popsync.ops.publish import Publisher
    from popsync.settings import Settings
    from tests.polling import Query

EVENT_CODEC = Codec(m.RegistryEvent)

# --------------------------------------------------------------------------------------------
# The citizen of the unit tests: born on 2 January 2003 in TP. Hồ Chí Minh

PIN = "079203000123"
BIRTH = date(2003, 1, 2)


def birth_event(**overrides: Any) -> m.RegistryEvent:
    fields: dict[str, Any] = {
        "event_id": "2f1c7a52-0000-4000-8000-000000000001",
        "event_type": m.EventType.BIRTH_REGISTERED,
        "source_registry": m.SourceRegistry.CIVIL_STATUS,
        "source_province": "79",
        "subject_pin": PIN,
        "occurred_at": datetime(2003, 1, 2, 8, 30, tzinfo=UTC),
        "recorded_at": datetime(2003, 1, 3, 9, 0, tzinfo=UTC),
        "source_sequence": 7,
        "payload": m.BirthRegistered(
            full_name="Nguyễn Văn An",
            birth_date=BIRTH,
            sex=m.Sex.M,
            birthplace_province="79",
            registration_number="R-1",
        ),
    }
    fields.update(overrides)
    return m.RegistryEvent(**fields)


def first_release_birth() -> bytes:
    """`birth_event()` as the first released RegistryEvent schema (v1) wrote it."""
    import io

    from fastavro import schemaless_writer

    from popsync.contract.schemas import earlier_versions

    old = {
        **birth_event().model_dump(mode="python", exclude={"payload", "subject_legacy_id"}),
        "payload": ("vn.gov.popsync.BirthRegistered", birth_event().payload.model_dump()),
    }
    (v1,) = earlier_versions("RegistryEvent")
    buffer = io.BytesIO()
    buffer.write(MAGIC + v1.fingerprint)
    schemaless_writer(buffer, v1.parsed, old)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# That citizen's story, for the merge rules: event "ev-<n>" has source sequence n


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 9, tzinfo=UTC)


def story_event(
    event_id: str, day: date, payload: m.ContractModel, source: m.SourceRegistry, **extra: Any
) -> m.RegistryEvent:
    event_type = {
        m.BirthRegistered: m.EventType.BIRTH_REGISTERED,
        m.DeathRegistered: m.EventType.DEATH_REGISTERED,
        m.MarriageRegistered: m.EventType.MARRIAGE_REGISTERED,
        m.DivorceRecorded: m.EventType.DIVORCE_RECORDED,
        m.PermanentResidenceRegistered: m.EventType.PERMANENT_RESIDENCE_REGISTERED,
        m.IdCardIssued: m.EventType.ID_CARD_ISSUED,
        m.CivilStatusChanged: m.EventType.CIVIL_STATUS_CHANGED,
        m.DeathAnnulled: m.EventType.DEATH_ANNULLED,
    }[type(payload)]
    return m.RegistryEvent(
        event_id=event_id,
        event_type=event_type,
        source_registry=source,
        source_province="79",
        subject_pin=PIN,
        occurred_at=_at(day),
        recorded_at=_at(day) + timedelta(hours=2),
        source_sequence=int(event_id.split("-")[-1]),
        payload=payload,
        **extra,
    )


_CS, _RES, _ID = m.SourceRegistry.CIVIL_STATUS, m.SourceRegistry.RESIDENCE, m.SourceRegistry.ID_CARD


def address(commune: str) -> m.Address:
    return m.Address(province_code="79", commune_code=commune, address_line="12 Lê Lợi")


def story_birth() -> m.RegistryEvent:
    payload = m.BirthRegistered(
        full_name="Nguyễn Văn An",
        birth_date=BIRTH,
        sex=m.Sex.M,
        birthplace_province="79",
        registration_number="B-1",
    )
    return story_event("ev-1", BIRTH, payload, _CS)


def story_move(n: int, day: date, commune: str) -> m.RegistryEvent:
    payload = m.PermanentResidenceRegistered(address=address(commune), effective_date=day)
    return story_event(f"ev-{n}", day, payload, _RES)


def story_marriage(n: int, day: date) -> m.RegistryEvent:
    payload = m.MarriageRegistered(
        spouse_pin="079303000999",
        spouse_full_name="Trần Thị Bình",
        marriage_date=day,
        registration_number="M-1",
    )
    return story_event(f"ev-{n}", day, payload, _CS)


def story_death(n: int, day: date) -> m.RegistryEvent:
    payload = m.DeathRegistered(death_date=day, death_place_province="79", registration_number="D")
    return story_event(f"ev-{n}", day, payload, _CS)


def story_annulment(n: int, day: date, number: str = "D") -> m.RegistryEvent:
    payload = m.DeathAnnulled(
        death_registration_number=number, court_decision_number="12/2024/QĐ-TA", decision_date=day
    )
    return story_event(f"ev-{n}", day, payload, _CS)


def story() -> list[m.RegistryEvent]:
    """One citizen's life, including an event that conflicts with a later-known death."""
    card = m.IdCardIssued(
        card=m.IdCard(
            card_number=PIN,
            issue_date=date(2017, 3, 1),
            issuing_authority="Cục Cảnh sát QLHC về TTXH",
        )
    )
    rename = m.CivilStatusChanged(
        change_kind=m.CivilStatusChangeKind.NAME_CHANGE,
        new_full_name="Nguyễn Văn Bình",
        effective_date=date(2021, 5, 5),
        decision_number="QĐ-1",
    )
    divorce = m.DivorceRecorded(divorce_date=date(2023, 2, 2), court_decision_number="C-9")
    return [
        story_birth(),
        story_move(2, date(2010, 1, 1), "26734"),
        story_event("ev-3", date(2017, 3, 1), card, _ID),
        story_marriage(4, date(2022, 1, 1)),
        story_event("ev-5", date(2021, 5, 5), rename, _CS),
        story_move(6, date(2022, 8, 8), "26737"),
        story_event("ev-7", date(2023, 2, 2), divorce, _CS),
        story_death(8, date(2024, 1, 1)),
        story_move(9, date(2024, 3, 3), "26740"),  # after the death: a conflict
    ]


# --------------------------------------------------------------------------------------------
# Valid events about fresh citizens, and the catalogue of bad input built from them

Sex = Literal["M", "F"]
ONE_MB = 1_000_000


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

    NAME = "Lương Thị Huyền Trang"  # the subject of every event; must never reach a message text
    BIRTH = date(2003, 5, 17)

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
            full_name=self.NAME,
            birth_date=self.BIRTH,
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
            self.BIRTH,
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
            full_name=self.NAME,
            birth_date=self.BIRTH,
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
    assert value.count(Citizens.NAME.encode()) == 1
    at = value.index(Citizens.NAME.encode())
    original = Citizens.NAME.encode()
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
# the signature-level kinds: how the headers of a decodable event can be wrong

Headers = list[tuple[str, bytes]]
Sign = Callable[[bytes | None, bytes | None], Headers]
# A key no directory knows, under a development publisher's name.
UNKNOWN_SIGNER = Signer("dev-civil-status", "dev-civil-status-k-unregistered", b"\x07" * 32)


def unsigned(_key: bytes | None, _value: bytes | None) -> Headers:
    return []


def signed_by(signer: Signer) -> Sign:
    """Signed by `signer`, whatever registry the event declares."""

    def sign(key: bytes | None, value: bytes | None) -> Headers:
        assert value is not None
        return signer.headers(key, value, EVENT_CODEC.decode(value))

    return sign


def signed_for_another_key(key: bytes | None, value: bytes | None) -> Headers:
    """Its registry's signature of the same value under another message key (a replay of
    the event onto another citizen's partition)."""
    return signature_headers((key or b"") + b"0", value)


def garbled_signature(key: bytes | None, value: bytes | None) -> Headers:
    """Its registry's key id, with 64 bytes that are no signature of anything."""
    key_id = dict(signature_headers(key, value))[KEY_ID_HEADER]
    return [(SIGNATURE_HEADER, b"\x00" * 64), (KEY_ID_HEADER, key_id)]


# --------------------------------------------------------------------------------------------
# the catalogue of kinds


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: its bytes (`build`) and its headers (`sign`: by default the
    signature its registry would give a decodable event; none for bytes that do not decode)."""

    name: str
    reason: str
    build: Callable[[Citizens], Sent]
    sign: Sign = signature_headers


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
    # ---- signature: who signed it, and may they -------------------------------------------
    Kind("unsigned_event", "UNSIGNED", lambda c: sent(c.birth()), unsigned),
    Kind(
        "signed_by_an_unknown_key",
        "SIGNER_UNKNOWN",
        lambda c: sent(c.birth()),
        signed_by(UNKNOWN_SIGNER),
    ),
    Kind(
        "signature_for_another_message_key",
        "SIGNATURE_INVALID",
        lambda c: sent(c.birth()),
        signed_for_another_key,
    ),
    Kind("garbled_signature", "SIGNATURE_INVALID", lambda c: sent(c.birth()), garbled_signature),
    Kind(
        "residence_key_signs_a_death",  # the death declares CIVIL_STATUS
        "SOURCE_NOT_SIGNER",
        lambda c: sent(c.death()),
        signed_by(dev_signer(m.SourceRegistry.RESIDENCE)),
    ),
    Kind(
        "residence_key_signs_a_move_declared_as_civil_status",
        "SOURCE_NOT_SIGNER",
        lambda c: sent(envelope(c.move(), source_registry=m.SourceRegistry.CIVIL_STATUS)),
        signed_by(dev_signer(m.SourceRegistry.RESIDENCE)),
    ),
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
    # EVENT_TYPE_UNKNOWN: no publisher may publish UNKNOWN (EVENT_TYPE_NOT_PERMITTED first)
    Kind(
        "event_type_unknown",
        "EVENT_TYPE_NOT_PERMITTED",
        lambda c: sent(envelope(c.birth(), event_type=m.EventType.UNKNOWN)),
    ),
    Kind(
        "payload_does_not_match_event_type",
        "PAYLOAD_TYPE_MISMATCH",
        lambda c: sent(envelope(c.birth(), event_type=m.EventType.DEATH_REGISTERED)),
    ),
    # The signer's authority decides first: SOURCE_UNKNOWN and SOURCE_NOT_AUTHORITATIVE are
    # pre-empted (test_bad_input_catalogue.NOT_CONSTRUCTIBLE).
    Kind(
        "source_registry_unknown",  # no registry of kind UNKNOWN signs it
        "UNSIGNED",
        lambda c: sent(envelope(c.birth(), source_registry=m.SourceRegistry.UNKNOWN)),
    ),
    Kind(
        "residence_registry_publishes_a_birth",
        "EVENT_TYPE_NOT_PERMITTED",
        lambda c: sent(envelope(c.birth(), source_registry=m.SourceRegistry.RESIDENCE)),
    ),
    Kind(
        "social_insurance_publishes_a_death",
        "EVENT_TYPE_NOT_PERMITTED",
        lambda c: sent(envelope(c.death(), source_registry=m.SourceRegistry.SOCIAL_INSURANCE)),
    ),
    # ---- places ----------------------------------------------------------------------------
    Kind(  # no publisher speaks for it: SOURCE_PROVINCE_UNKNOWN is pre-empted
        "source_province_never_existed",
        "PROVINCE_OUT_OF_SCOPE",
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
        # Half `huge` characters: under the event size limit, which is checked first.
        lambda c: sent(
            spoil(c.birth(), full_name=("Lương Thị Huyền Trang " * c.huge)[: c.huge // 2])
        ),
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
    Kind(
        "event_over_the_size_limit",
        "EVENT_TOO_LARGE",
        lambda c: sent(envelope(c.birth(), correlation_id="c" * (MAX_EVENT_BYTES + 1))),
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
        "EVENT_TYPE_NOT_PERMITTED",
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
    headers: tuple[tuple[str, bytes], ...] = ()  # send them with it: its signature, if any


def bad_messages(citizens: Citizens) -> list[BadMessage]:
    """Every kind once, as the bytes and headers that go on the registry-events topic."""
    messages = []
    for kind in KINDS:
        key, value = kind.build(citizens)
        headers = tuple(kind.sign(key, value))
        messages.append(BadMessage(kind.name, kind.reason, key, value, headers))
    return messages


# --------------------------------------------------------------------------------------------
# Events about a given PIN for the real pipeline (tests/integration), and what it made of them

_events = itertools.count(1)  # one counter for every module: event ids never repeat


def registry_event(
    pin: str,
    payload: m.ContractModel,
    event_type: m.EventType,
    source: m.SourceRegistry,
    day: date,
    **extra: Any,
) -> m.RegistryEvent:
    number = next(_events)
    moment = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    return m.RegistryEvent(
        event_id=f"00000000-0000-4000-8000-{number:012d}",
        event_type=event_type,
        source_registry=source,
        source_province="79",
        subject_pin=pin,
        occurred_at=moment,
        recorded_at=moment,
        source_sequence=number,
        payload=payload,
        **extra,
    )


def birth(pin: str, name: str = "trần  thị BÌNH") -> m.RegistryEvent:
    payload = m.BirthRegistered(
        full_name=name,
        birth_date=date(1990, 4, 5),
        sex=m.Sex.F,
        birthplace_province="79",
        registration_number="KS-1990-1",
    )
    return registry_event(
        pin, payload, m.EventType.BIRTH_REGISTERED, m.SourceRegistry.CIVIL_STATUS, date(1990, 4, 5)
    )


def marriage(pin: str, day: date) -> m.RegistryEvent:
    payload = m.MarriageRegistered(
        spouse_full_name="Lê Văn Cường",
        marriage_date=day,
        registration_number="KH-1",
    )
    return registry_event(
        pin, payload, m.EventType.MARRIAGE_REGISTERED, m.SourceRegistry.CIVIL_STATUS, day
    )


def move(pin: str, day: date, province: str = "79", commune: str = "26734") -> m.RegistryEvent:
    payload = m.PermanentResidenceRegistered(
        address=m.Address(
            province_code=province, commune_code=commune, address_line="45 Nguyễn Huệ"
        ),
        effective_date=day,
    )
    return registry_event(
        pin, payload, m.EventType.PERMANENT_RESIDENCE_REGISTERED, m.SourceRegistry.RESIDENCE, day
    )


def death(pin: str, day: date) -> m.RegistryEvent:
    payload = m.DeathRegistered(
        death_date=day, death_place_province="79", registration_number="KT-1"
    )
    return registry_event(
        pin, payload, m.EventType.DEATH_REGISTERED, m.SourceRegistry.CIVIL_STATUS, day
    )


def divorce(pin: str, day: date) -> m.RegistryEvent:
    payload = m.DivorceRecorded(divorce_date=day, court_decision_number="QĐ-12/2019")
    return registry_event(
        pin, payload, m.EventType.DIVORCE_RECORDED, m.SourceRegistry.CIVIL_STATUS, day
    )


def publish(publisher: Publisher, *events: m.RegistryEvent) -> None:
    publisher.publish((e.subject_pin.encode() if e.subject_pin else None, e) for e in events)


def citizen(query: Query, pin: str, version: int) -> tuple[Any, ...] | None:
    rows = query(
        "SELECT version, full_name, marital_status, life_status, permanent_province,"
        " snapshot FROM citizens WHERE pin = %s AND version >= %s",
        pin,
        version,
    )
    return rows[0] if rows else None


def read_dead_letters(settings: Settings, wanted: int, timeout: float = 60) -> list[m.DeadLetter]:
    values = read_until(settings, settings.topics.dead_letters, lambda v: len(v) >= wanted, timeout)
    return [Codec(m.DeadLetter).decode(value) for value in values]
