"""Avro single-object encoding of contract records (Avro spec, "Single object encoding").

Each value is `C3 01` + the 8-byte CRC-64-AVRO fingerprint of the writer schema
+ the Avro binary body. The fingerprint names the writer schema without a
registry round trip, so the embedded broker and Apache Kafka carry identical
bytes; a reader resolves any writer version it knows to its own (reader) schema.

A value that is not a readable record raises `DecodeError` with a reason code from
`popsync.domain.reasons` (stage "decode"); nothing else escapes for bad bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, TypeVar

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import ValidationError

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

    def encode(self, record: models.ContractModel) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, self.schema.parsed, to_avro_datum(record))
        return buffer.getvalue()

    def decode_datum(self, value: bytes | None) -> dict[str, Any]:
        """Bytes to the Avro datum (plain dicts), resolving the writer schema."""
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
        return datum

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
        """Bytes to the pydantic model of this codec."""
        return from_avro_datum(self.model, self.decode_datum(value))


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
    # pydantic's __getattr__ first, a measured hot spot when encoding updates.
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


def describe_validation_error(exc: ValidationError) -> str:
    """Field paths and error kinds only: input values may be personal data."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in exc.errors()[:5]]
    return "; ".join(parts)
