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
from fastavro import schemaless_writer

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
    schema = EVENT_CODEC.schema.parsed
    header = MAGIC + EVENT_CODEC.schema.fingerprint
    position = 0
    try:
        reader = fastavro.reader(handle, reader_schema=schema, return_record_name=True)
        for position, datum in enumerate(reader):
            if not isinstance(datum, dict):  # the reader schema is a record: never
                raise ArchiveUnreadable(f"{path}: record {position} is not a record")
            yield _staged(position, datum, header, schema)
    except ArchiveUnreadable:
        raise
    except Exception as exc:  # fastavro raises many kinds for a broken header or block
        where = "its header" if position == 0 else f"the block after record {position}"
        raise ArchiveUnreadable(
            f"{path}: {where} cannot be read as RegistryEvent records "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _staged(position: int, datum: dict[str, Any], header: bytes, schema: Any) -> StagedRecord:
    buffer = io.BytesIO()
    buffer.write(header)
    schemaless_writer(buffer, schema, datum)
    return StagedRecord(
        position,
        datum.get("subject_pin") or "",
        _aware(datum["occurred_at"]),
        _aware(datum["recorded_at"]),
        buffer.getvalue(),
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
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no detail"
