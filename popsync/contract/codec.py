"""Avro single-object encoding of contract records (Avro spec, "Single object encoding").

Each value is `C3 01` + the 8-byte CRC-64-AVRO fingerprint of the writer schema
+ the Avro binary body. The fingerprint names the writer schema without a
registry round trip, so the embedded broker and Apache Kafka carry identical
bytes; a reader resolves any writer version it knows to its own (reader) schema.

A value that is not a readable record raises `DecodeError` with a reason code from
`popsync.domain.reasons` (stage "decode"); nothing else escapes for bad bytes.
"""

from __future__ import annotations

import functools
import io
import types
from collections.abc import Callable, Mapping
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar, Union, get_args, get_origin

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import AwareDatetime, ValidationError

from popsync.contract import models
from popsync.contract.schemas import (
    ContractSchema,
    contract_schema,
    earlier_versions,
    full_name,
    raw_schema,
    short_name,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

M = TypeVar("M", bound=models.ContractModel)


def _payload_models() -> dict[str, type[models.ContractModel]]:
    """Payload records of the envelope, read from its schema's `payload` union."""
    envelope = raw_schema("RegistryEvent")
    (payload_field,) = (f for f in envelope["fields"] if f["name"] == "payload")
    return {full_name(n): getattr(models, short_name(n)) for n in payload_field["type"]}


PAYLOAD_MODELS = _payload_models()


class DecodeError(ValueError):
    """A value that is not a readable contract record; `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def payload_record_for(event_type: str) -> str:
    """Full Avro name of the payload record of an event type (BIRTH_REGISTERED→BirthRegistered).

    Derived from the names, so the mapping cannot drift from the schemas.
    """
    return full_name("".join(part.capitalize() for part in event_type.split("_")))


class Codec:
    """Encodes and decodes one top-level record type, knowing every writer version."""

    def __init__(self, model: type[M], writers: tuple[ContractSchema, ...] = ()) -> None:
        self.model = model
        self.schema = contract_schema(short_name(model.AVRO_NAME))
        known = (self.schema, *earlier_versions(self.schema.name), *writers)
        self._writers: Mapping[bytes, ContractSchema] = {s.fingerprint: s for s in known}
        self._header = MAGIC + self.schema.fingerprint
        self._plain_writers: dict[bytes, Any] = {}  # see _well_formed
        # Naming the records read is only needed to tell a union's records apart (the
        # event payload), and costs: it doubled the time to read a CitizenUpdate.
        self._name_records = _chooses_between_records(self.schema.parsed, set())
        self._build = _builder(model)  # see decode

    def encode(self, record: models.ContractModel) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, self.schema.parsed, to_avro_datum(record))
        return buffer.getvalue()

    def writer(self, fingerprint: bytes) -> ContractSchema | None:
        """The contract's schema version of this fingerprint, if it is one this codec reads."""
        return self._writers.get(fingerprint)

    def written_with_current_schema(self, value: bytes | None) -> bool:
        """True if `value` names this codec's own (current) schema as its writer."""
        return value is not None and value[2:HEADER_SIZE] == self.schema.fingerprint

    def decode_datum(self, value: bytes | None) -> dict[str, Any]:
        """Bytes to the Avro datum (plain dicts), resolving the writer schema."""
        return self._read(value)[0]

    def _read(self, value: bytes | None) -> tuple[dict[str, Any], ContractSchema]:
        """`decode_datum`, also telling which writer schema the value was written with."""
        if not value:
            raise DecodeError("EMPTY_VALUE", "message value is empty")
        if len(value) < HEADER_SIZE or value[:2] != MAGIC:
            raise DecodeError("BAD_MAGIC", "value is not Avro single-object encoded")
        writer = self._writers.get(value[2:HEADER_SIZE])
        if writer is None:
            raise DecodeError("UNKNOWN_SCHEMA", "writer schema fingerprint is not in the contract")
        buffer = io.BytesIO(value)
        buffer.seek(HEADER_SIZE)
        try:
            datum = schemaless_reader(
                buffer,
                writer.parsed,
                # Resolution is only needed (and costly) for another writer version.
                None if writer is self.schema else self.schema.parsed,
                return_record_name=self._name_records,
                return_record_name_override=self._name_records,
            )
        except (ValueError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
            # Told apart only on this error path: is the body well-formed, so that just
            # one value failed to convert (a misaligned read fails UTF-8 decoding too)?
            if not self._well_formed(value, writer):
                raise DecodeError(
                    "AVRO_CORRUPT", f"Avro body unreadable: {type(exc).__name__}"
                ) from exc
            if isinstance(exc, UnicodeDecodeError):
                raise DecodeError(
                    "AVRO_INVALID_UTF8", "a string in the Avro body is not valid UTF-8"
                ) from exc
            raise DecodeError(
                "AVRO_DATE_OUT_OF_RANGE", "a date or timestamp lies outside years 1-9999"
            ) from exc
        except (EOFError, IndexError, TypeError) as exc:
            raise DecodeError(
                "AVRO_CORRUPT", f"Avro body unreadable: {type(exc).__name__}"
            ) from exc
        if buffer.tell() != len(value):
            raise DecodeError("AVRO_TRAILING_BYTES", "bytes left after the Avro record")
        if not isinstance(datum, dict):
            raise DecodeError("AVRO_CORRUPT", "Avro body is not a record")
        return datum, writer

    def _well_formed(self, value: bytes, writer: ContractSchema) -> bool:
        """True if the body reads exactly, with strings as bytes and dates and timestamps as
        plain numbers (the same binary encodings): then what failed was converting a value,
        not the structure."""
        plain = self._plain_writers.get(writer.fingerprint)
        if plain is None:
            plain = parse_schema(_uninterpreted(writer.parsed))
            self._plain_writers[writer.fingerprint] = plain
        buffer = io.BytesIO(value)
        buffer.seek(HEADER_SIZE)
        try:
            schemaless_reader(buffer, plain, None)
        except (EOFError, ValueError, OverflowError, IndexError, TypeError):
            return False
        return buffer.tell() == len(value)

    def decode(self, value: bytes | None) -> Any:
        """Bytes to the pydantic model of this codec.

        A value written with this codec's own schema is built without pydantic validation
        (`_builder`): fastavro has then read it with the very schema the model is generated
        from, and the generated models add no constraint beyond the Avro types, so validating
        could only repeat fastavro's checks, at a noticeable share of the decoding cost. A
        value from an earlier writer version was resolved to the reader schema by fastavro
        and is still validated.
        """
        datum, writer = self._read(value)
        if writer is self.schema:
            return self._build(datum)
        return from_avro_datum(self.model, datum)


def _chooses_between_records(schema: Any, seen: set[str]) -> bool:
    """True if a union somewhere in `schema` has more than one record branch."""
    if isinstance(schema, list):
        records = [b for b in schema if isinstance(b, dict) and b.get("type") == "record"]
        named = [b for b in schema if isinstance(b, str) and b in seen]
        if len(records) + len(named) > 1:
            return True
        return any(_chooses_between_records(branch, seen) for branch in schema)
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "record":
        seen.add(schema["name"])
        return any(_chooses_between_records(f["type"], seen) for f in schema["fields"])
    return any(_chooses_between_records(schema.get(key), seen) for key in ("items", "values"))


def _uninterpreted(schema: Any) -> Any:
    """A parsed schema as plain JSON whose strings are `bytes` and whose logical types are
    gone: it reads the same binary data without decoding UTF-8 or converting dates."""
    if schema == "string":
        return "bytes"
    if isinstance(schema, list):
        return [_uninterpreted(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    plain: dict[str, Any] = {}
    for key, item in schema.items():
        if key == "logicalType" or key.startswith("__"):  # fastavro's parse bookkeeping
            continue
        if key in ("type", "items", "values"):
            plain[key] = _uninterpreted(item)
        elif key == "fields":
            plain[key] = [_uninterpreted(f) for f in item]
        else:
            plain[key] = item
    return plain


def to_avro_datum(record: models.ContractModel) -> dict[str, Any]:
    """A model as the dict fastavro writes; a payload union branch is named explicitly."""
    datum = record.model_dump(mode="python")
    # Not getattr(record, "payload", None): a model without the field raises inside
    # pydantic's __getattr__ first, a hot spot when encoding updates.
    payload = record.__dict__.get("payload")
    if isinstance(payload, models.ContractModel) and type(payload).AVRO_NAME in PAYLOAD_MODELS:
        datum["payload"] = (payload.AVRO_NAME, datum["payload"])
    return datum


def from_avro_datum(model: type[M], datum: Mapping[str, Any]) -> M:
    """A decoded datum as a model; the named payload branch picks its model."""
    fields = dict(datum)
    payload = fields.get("payload")
    try:
        if isinstance(payload, tuple):
            name, body = payload
            fields["payload"] = PAYLOAD_MODELS[name].model_validate(body)
        return model.model_validate(fields)
    except ValidationError as exc:
        raise DecodeError("CONTRACT_VIOLATION", describe_validation_error(exc)) from exc


Convert = Callable[[Any], Any]

# Field types fastavro already returns as the model holds them: str, int, bool, float,
# bytes, date and tz-aware (UTC) datetime for the timestamp logical types.
_AS_READ = frozenset({str, int, bool, float, bytes, date, datetime, AwareDatetime})


@functools.cache
def _builder(model: type[models.ContractModel]) -> Callable[[dict[str, Any]], Any]:
    """Builds `model` from a datum read with its own schema, without validating.

    Safe because the model is generated from that schema (`popsync contract generate`) and
    declares nothing the Avro types do not: what fastavro read already has each field's
    Python type, except enum symbols (str), records (dict), and records of a union (a
    `(full name, dict)` pair), which the per-field converters turn into members and models.

    The instance is assembled as `model_construct` assembles it when every field is given
    (the datum of the current schema has every field, in the model's order), without its
    per-field alias and default lookups, which cost more than validating in pydantic-core.
    """
    config = model.model_config
    if (
        model.__pydantic_post_init__
        or model.__private_attributes__
        or config.get("extra") == "allow"
        or any(f.alias or f.validation_alias for f in model.model_fields.values())
    ):
        raise TypeError(f"{model.__name__} is not a plain generated contract model")
    converters = [
        (name, convert)
        for name, field in model.model_fields.items()
        if (convert := _converter(field.annotation)) is not None
    ]
    new = model.__new__
    set_attribute = object.__setattr__

    def build(datum: dict[str, Any]) -> Any:  # the datum is fastavro's, fresh: reused as is
        for name, convert in converters:
            datum[name] = convert(datum[name])
        instance = new(model)
        set_attribute(instance, "__dict__", datum)
        set_attribute(instance, "__pydantic_fields_set__", set(datum))
        set_attribute(instance, "__pydantic_extra__", None)
        set_attribute(instance, "__pydantic_private__", None)
        return instance

    return build


def _converter(annotation: Any) -> Convert | None:
    """What turns a datum value into the field's value; None when it already is that."""
    if annotation in _AS_READ:
        return None
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return {member.value: member for member in annotation}.__getitem__
    if isinstance(annotation, type) and issubclass(annotation, models.ContractModel):
        return _builder(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        item = _converter(args[0])
        return None if item is None else lambda values: [item(v) for v in values]
    if origin is Union or origin is types.UnionType:
        branches = [a for a in args if a is not type(None)]
        convert = _converter(branches[0]) if len(branches) == 1 else _named_record(branches)
        if convert is None or len(branches) == len(args):
            return convert
        return lambda value: None if value is None else convert(value)
    raise TypeError(f"no converter for field type {annotation!r}")


def _named_record(branches: list[Any]) -> Convert:
    """A union of records, read as `(full Avro name, dict)` (`return_record_name`)."""
    if not all(isinstance(b, type) and issubclass(b, models.ContractModel) for b in branches):
        raise TypeError(f"a union must be of records only: {branches!r}")
    builders = {b.AVRO_NAME: _builder(b) for b in branches}
    return lambda pair: builders[pair[0]](pair[1])


def describe_validation_error(exc: ValidationError) -> str:
    """Field paths and error kinds only: input values may be personal data."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in exc.errors()[:5]]
    return "; ".join(parts)
