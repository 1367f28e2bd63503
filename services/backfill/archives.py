"""Reading a registry's archive: its records as they are staged.

Two formats, told apart by their first bytes:
- an Avro object container file (`Obj\\x01`: fastavro's standard format) of the contract's
  RegistryEvent records, written with any version of the schema the contract knows: each
  record is resolved to the current schema and staged as the stream carries it (Avro
  single-object bytes), so the validator reads it exactly as it reads a message;
- JSON lines as `popsync publish` reads them: each line is judged by `publish`'s own
  `judge_line` (the same limits on size, depth, numbers, UTF-8), against the registry kind
  of the archive's signer; a line that is no event is staged with its reason and its bytes,
  and dead-lettered in its turn.
A container whose header or a block cannot be read is refused as a whole
(`ArchiveUnreadable`): its signature verified, so the registry signed a broken file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from popsync.adapters.postgres.backfill import StagedRecord
from popsync.contract import models as m
from popsync.contract.codec import MAGIC, Codec
from popsync.ops.publish import BadLine, judge_line, read_lines

EVENT_CODEC = Codec(m.RegistryEvent)
CONTAINER_MAGIC = b"Obj\x01"
# Where a line that is no event sorts: it has no subject and no times.
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class ArchiveUnreadable(ValueError):
    """An archive that cannot be read; the message names the file and where."""


def is_container(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(CONTAINER_MAGIC)) == CONTAINER_MAGIC


def read_archive(path: Path, kind: m.SourceRegistry) -> Iterator[StagedRecord]:
    """Every record of the archive at `path` (its signer's registry `kind`), in file order."""
    with path.open("rb") as handle:
        if handle.read(len(CONTAINER_MAGIC)) == CONTAINER_MAGIC:
            handle.seek(0)
            yield from _container_records(path, handle)
        else:
            handle.seek(0)
            yield from _line_records(handle, kind)


def _container_records(path: Path, handle: BinaryIO) -> Iterator[StagedRecord]:
    count = 0
    try:
        writer = fastavro.reader(handle).writer_schema
        handle.seek(0)
        known = _fingerprint(writer)
        if EVENT_CODEC.knows_writer(known):
            records = _as_written(handle, parse_schema(writer), MAGIC + known)
        else:  # another version: resolved to the current schema, and encoded with it
            records = _resolved(handle)
        for record in records:
            yield record
            count += 1
    except Exception as exc:  # fastavro raises many kinds for a broken header or block
        where = "its header" if count == 0 else f"the block after record {count}"
        raise ArchiveUnreadable(
            f"{path}: {where} cannot be read as RegistryEvent records "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _fingerprint(schema: Any) -> bytes:
    canonical = to_parsing_canonical_form(parse_schema(schema))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _as_written(handle: BinaryIO, writer: Any, header: bytes) -> Iterator[StagedRecord]:
    """Records written with a schema version the contract knows: each record's own bytes
    behind that version's header (what a registry would have put on the stream), read
    once for its key and times; nothing is encoded again."""
    position = 0
    for block in fastavro.block_reader(handle):
        buffer: io.BytesIO = block.bytes_  # type: ignore[attr-defined]  # the block's bytes
        data = buffer.getbuffer()
        try:
            for _ in range(block.num_records):
                start = buffer.tell()
                datum = schemaless_reader(buffer, writer, None)
                if not isinstance(datum, dict):
                    raise TypeError("not a record")
                yield _staged(position, datum, header + data[start : buffer.tell()])
                position += 1
        finally:
            data.release()


def _resolved(handle: BinaryIO) -> Iterator[StagedRecord]:
    schema = EVENT_CODEC.schema.parsed
    header = MAGIC + EVENT_CODEC.schema.fingerprint
    reader = fastavro.reader(handle, reader_schema=schema, return_record_name=True)
    for position, datum in enumerate(reader):
        if not isinstance(datum, dict):
            raise TypeError("not a record")
        buffer = io.BytesIO()
        buffer.write(header)
        schemaless_writer(buffer, schema, datum)
        yield _staged(position, datum, buffer.getvalue())


def _staged(position: int, datum: dict[str, Any], value: bytes) -> StagedRecord:
    return StagedRecord(
        position,
        datum.get("subject_pin") or "",
        _aware(datum["occurred_at"]),
        _aware(datum["recorded_at"]),
        value,
        reference=datum.get("subject_legacy_id"),
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _line_records(handle: BinaryIO, kind: m.SourceRegistry) -> Iterator[StagedRecord]:
    for number, raw in read_lines(handle):
        judged = judge_line(number, raw, kind)
        if judged is None:
            continue
        if isinstance(judged, BadLine):
            yield StagedRecord(number, "", _NO_TIME, _NO_TIME, raw, judged.reason, judged.message)
            continue
        event = judged.event
        yield StagedRecord(
            number,
            event.subject_pin or "",
            event.occurred_at,
            event.recorded_at,
            judged.value,
            reference=event.subject_legacy_id,
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no detail"
