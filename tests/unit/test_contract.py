"""The Avro files are the contract; everything in Python must derive from them."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from popsync.contract import codegen
from popsync.contract import models as m
from popsync.contract.codec import PAYLOAD_MODELS, Codec, DecodeError, payload_record_for
from popsync.contract.json_form import event_from_json, event_to_json
from popsync.contract.schemas import all_schema_names, raw_schema, schema_dir


def test_generated_models_are_up_to_date() -> None:
    assert codegen.GENERATED_PATH.read_text(encoding="utf-8") == codegen.generate()


def _is_optional(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


@pytest.mark.parametrize("name", all_schema_names())
def test_every_model_field_matches_its_schema(name: str) -> None:
    schema = raw_schema(name)
    model = getattr(m, name)
    if schema["type"] == "enum":
        assert [member.value for member in model] == schema["symbols"]
        return
    assert issubclass(model, BaseModel)
    assert f"{schema['namespace']}.{schema['name']}" == model.AVRO_NAME
    assert list(model.model_fields) == [f["name"] for f in schema["fields"]]
    for field in schema["fields"]:
        model_field = model.model_fields[field["name"]]
        assert model_field.description == field["doc"]
        assert model_field.is_required() == ("default" not in field), field["name"]
        if _is_optional(field["type"]):
            assert model_field.default is None


@pytest.mark.parametrize("name", all_schema_names())
def test_every_schema_is_documented_and_namespaced(name: str) -> None:
    schema = raw_schema(name)
    assert schema["namespace"] == "vn.gov.popsync"
    assert schema["doc"]
    for field in schema.get("fields", []):
        assert field.get("doc"), f"{name}.{field['name']} has no doc"


def test_one_named_type_per_file() -> None:
    for path in schema_dir().glob("*.avsc"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert path.name == f"{data['namespace']}.{data['name']}.avsc"


def test_timestamps_are_timezone_aware_logical_types() -> None:
    event = raw_schema("RegistryEvent")
    types = {f["name"]: f["type"] for f in event["fields"]}
    for name in ("occurred_at", "recorded_at"):
        assert types[name] == {"type": "long", "logicalType": "timestamp-millis"}


def test_every_event_type_has_its_payload_record() -> None:
    for event_type in m.EventType:
        if event_type is not m.EventType.UNKNOWN:
            assert payload_record_for(event_type.value) in PAYLOAD_MODELS


def birth_event(**overrides: Any) -> m.RegistryEvent:
    fields: dict[str, Any] = {
        "event_id": "2f1c7a52-0000-4000-8000-000000000001",
        "event_type": m.EventType.BIRTH_REGISTERED,
        "source_registry": m.SourceRegistry.CIVIL_STATUS,
        "source_province": "79",
        "subject_pin": "079203000123",
        "occurred_at": datetime(2003, 1, 2, 8, 30, tzinfo=UTC),
        "recorded_at": datetime(2003, 1, 3, 9, 0, tzinfo=UTC),
        "source_sequence": 7,
        "payload": m.BirthRegistered(
            full_name="Nguyễn Văn An",
            birth_date=date(2003, 1, 2),
            sex=m.Sex.M,
            birthplace_province="79",
            registration_number="R-1",
        ),
    }
    fields.update(overrides)
    return m.RegistryEvent(**fields)


def test_codec_round_trip_keeps_payload_type() -> None:
    codec = Codec(m.RegistryEvent)
    event = birth_event()
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    assert isinstance(decoded.payload, m.BirthRegistered)


def test_single_object_header() -> None:
    value = Codec(m.RegistryEvent).encode(birth_event())
    assert value[:2] == b"\xc3\x01"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "EMPTY_VALUE"),
        (None, "EMPTY_VALUE"),
        (b"\x00\x00\x00\x00\x01hello", "BAD_MAGIC"),
        (b"\xc3\x01" + b"\x00" * 8 + b"body", "UNKNOWN_SCHEMA"),
    ],
)
def test_codec_rejects_what_is_not_a_contract_record(value: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Codec(m.RegistryEvent).decode(value)
    assert info.value.reason == reason


def test_codec_rejects_truncated_avro() -> None:
    value = Codec(m.RegistryEvent).encode(birth_event())
    with pytest.raises(DecodeError) as info:
        Codec(m.RegistryEvent).decode(value[:-5])
    assert info.value.reason == "AVRO_CORRUPT"


def test_codec_rejects_trailing_bytes() -> None:
    value = Codec(m.RegistryEvent).encode(birth_event())
    with pytest.raises(DecodeError) as info:
        Codec(m.RegistryEvent).decode(value + b"\x00")
    assert info.value.reason == "AVRO_TRAILING_BYTES"


def test_json_form_round_trip() -> None:
    event = birth_event()
    assert event_from_json(json.loads(json.dumps(event_to_json(event)))) == event


def test_json_form_names_the_broken_field_without_its_value() -> None:
    obj = event_to_json(birth_event())
    obj["payload"]["birth_date"] = "not-a-date"
    with pytest.raises(DecodeError) as info:
        event_from_json(obj)
    assert info.value.reason == "CONTRACT_VIOLATION"
    assert "birth_date" in str(info.value)
    assert "not-a-date" not in str(info.value)


def test_every_earlier_writer_version_is_still_readable() -> None:
    """Values written with a kept earlier schema (`schemas/avro/previous/`) decode today."""
    import io

    from fastavro import schemaless_writer

    from popsync.contract.codec import MAGIC
    from popsync.contract.schemas import earlier_versions

    old_birth = {
        **birth_event().model_dump(mode="python", exclude={"payload", "subject_legacy_id"}),
        "event_type": "BIRTH_REGISTERED",
        "source_registry": "CIVIL_STATUS",
        "payload": (
            "vn.gov.popsync.BirthRegistered",
            {**birth_event().payload.model_dump(mode="python"), "sex": "M"},
        ),
    }
    (v1,) = earlier_versions("RegistryEvent")
    assert v1.fingerprint.hex() == "4dd595ff2705d43a"  # RegistryEvent before DEATH_ANNULLED
    buffer = io.BytesIO()
    buffer.write(MAGIC + v1.fingerprint)
    schemaless_writer(buffer, v1.parsed, old_birth)
    assert Codec(m.RegistryEvent).decode(buffer.getvalue()) == birth_event()
    for name in ("MergeConflict", "CitizenUpdate"):
        assert earlier_versions(name), f"{name}: the released version must stay readable"
