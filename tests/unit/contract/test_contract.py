"""The Avro files are the contract; everything in Python must derive from them."""

from __future__ import annotations

import json
import struct
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from popsync.contract import codegen
from popsync.contract import models as m
from popsync.contract.codec import PAYLOAD_MODELS, Codec, DecodeError, payload_record_for
from popsync.contract.json_form import event_from_json, event_to_json
from popsync.contract.schemas import all_schema_names, raw_schema, schema_dir
from tests.builders import birth_event, first_release_birth


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


# --------------------------------------------------------------------------------------------
# Decoding a value of the current schema builds the models without validating them: it must
# give exactly what validating gives, and earlier writers and bad bytes must not change.


def _avro_values(annotation: Any) -> Any:
    """Values of a model field that its Avro type can carry (hypothesis strategy)."""
    import types
    from enum import StrEnum
    from typing import Union, get_args, get_origin

    from hypothesis import strategies as st
    from pydantic import AwareDatetime

    plain = {
        str: st.text(max_size=12),
        bool: st.booleans(),
        int: st.integers(min_value=-(2**31), max_value=2**31 - 1),  # fits "int" and "long"
        float: st.floats(allow_nan=False),
        bytes: st.binary(max_size=12),
        date: st.dates(min_value=date(1800, 1, 1), max_value=date(2200, 12, 31)),
        AwareDatetime: st.datetimes(
            min_value=datetime(1800, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
        ).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000)),  # millis
    }
    if annotation in plain:
        return plain[annotation]
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, m.ContractModel):
        return _avro_records(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return st.lists(_avro_values(args[0]), max_size=3)
    assert origin is Union or origin is types.UnionType, annotation
    branches = [_avro_values(a) for a in args if a is not type(None)]
    return st.one_of(*branches, *([st.none()] if type(None) in args else []))


def _avro_records(model: type[m.ContractModel]) -> Any:
    """Records of `model` with every field given (so all of them are in model_fields_set)."""
    from hypothesis import strategies as st

    fields = {name: _avro_values(f.annotation) for name, f in model.model_fields.items()}
    return st.fixed_dictionaries(fields).map(lambda values: model(**values))


def _anatomy(value: Any) -> Any:
    """Everything about a decoded value that `==` may overlook: types (enum members, nested
    models), field order, model_fields_set, extra and private state, the time zone."""
    if isinstance(value, BaseModel):
        return (
            type(value),
            frozenset(value.model_fields_set),
            value.__pydantic_extra__,
            value.__pydantic_private__,
            tuple((name, _anatomy(v)) for name, v in value.__dict__.items()),
        )
    if isinstance(value, list):
        return (list, tuple(_anatomy(v) for v in value))
    if isinstance(value, datetime):
        return (datetime, value, type(value.tzinfo), value.utcoffset())
    if isinstance(value, float):  # by its bits: a damaged double may read as NaN, never == NaN
        return (float, struct.pack(">d", value))
    return (type(value), value)


def _assert_built_as_validated(
    codec: Codec, value: bytes, original: m.ContractModel, *, all_fields_given: bool = True
) -> None:
    """Decoded, `value` is the same as validated and equals `original`; with all fields
    given to `original`, even its anatomy is the same (else its model_fields_set is smaller)."""
    from popsync.contract.codec import from_avro_datum

    built = codec.decode(value)
    validated = from_avro_datum(codec.model, codec.decode_datum(value))
    assert _anatomy(built) == _anatomy(validated)
    if all_fields_given:
        assert _anatomy(built) == _anatomy(original)
    assert built == validated == original
    assert built.model_dump() == validated.model_dump() == original.model_dump()


def _top_level_codecs() -> dict[type[m.ContractModel], Codec]:
    from popsync.contract.schemas import TOP_LEVEL_RECORDS

    return {getattr(m, name): Codec(getattr(m, name)) for name in TOP_LEVEL_RECORDS}


CODECS = _top_level_codecs()


def _any_top_level_record() -> Any:
    from hypothesis import strategies as st

    return st.one_of(*(_avro_records(model) for model in CODECS))


def test_decoding_the_current_schema_builds_what_validating_builds() -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(record=_any_top_level_record())
    def check(record: m.ContractModel) -> None:
        codec = CODECS[type(record)]
        _assert_built_as_validated(codec, codec.encode(record), record)

    check()


def test_simulated_events_decode_as_validated() -> None:
    from popsync.dev.simulate.generator import simulate

    codec = CODECS[m.RegistryEvent]
    messages = simulate(60, seed=20251123, now=datetime(2026, 11, 23, 12, tzinfo=UTC))
    assert len({type(msg.event.payload) for msg in messages}) >= 8  # DeathAnnulled is rare
    for message in messages:
        value = codec.encode(message.event)
        _assert_built_as_validated(codec, value, message.event, all_fields_given=False)


def test_a_value_of_an_earlier_writer_version_is_still_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    from popsync.contract import codec as codec_module

    validated: list[type[BaseModel]] = []
    validate = codec_module.from_avro_datum

    def spy(model: Any, datum: Any) -> Any:
        validated.append(model)
        return validate(model, datum)

    monkeypatch.setattr(codec_module, "from_avro_datum", spy)
    codec = Codec(m.RegistryEvent)

    assert codec.decode(first_release_birth()) == birth_event()
    assert validated == [m.RegistryEvent]
    assert codec.decode(codec.encode(birth_event())) == birth_event()
    assert validated == [m.RegistryEvent]  # the current writer: built, not validated


def test_damaged_values_decode_or_fail_exactly_as_when_validated() -> None:
    """Decoding used to be `from_avro_datum(decode_datum(value))`: for damaged bytes it must
    still give the same record, or the same DecodeError reason."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from popsync.contract.codec import HEADER_SIZE, from_avro_datum

    def outcome(decode: Any, value: bytes) -> Any:
        try:
            return _anatomy(decode(value))
        except DecodeError as exc:
            return exc.reason

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(record=_any_top_level_record(), data=st.data())
    def check(record: m.ContractModel, data: st.DataObject) -> None:
        codec = CODECS[type(record)]
        value = bytearray(codec.encode(record))
        for _ in range(data.draw(st.integers(1, 3))):
            value[data.draw(st.integers(HEADER_SIZE, len(value) - 1))] = data.draw(
                st.integers(0, 255)
            )
        cut = data.draw(st.sampled_from([len(value), len(value) - 1, len(value) + 1]))
        damaged = bytes(value[:cut]) + (b"\x00" if cut > len(value) else b"")
        validated = outcome(lambda v: from_avro_datum(codec.model, codec.decode_datum(v)), damaged)
        assert outcome(codec.decode, damaged) == validated

    check()
