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

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

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


# Files that are neither: compressed, or a container of files. Read as JSON lines, each
# would only give lines of noise to park.
_PACKED = {
    b"\x1f\x8b": "gzip",
    b"PK\x03\x04": "zip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def read_archive(
    path: Path, kind: m.SourceRegistry, sha256: bytes | None = None
) -> Iterator[StagedRecord]:
    """Every record of the archive at `path` (its signer's registry `kind`), in file order.

    With `sha256` (the digest its signature verified), the bytes read must hash to it,
    checked once the last record is read: the file cannot change between its check and
    its reading unseen."""
    with path.open("rb") as raw:
        hashing = _Hashing(raw)
        handle = cast(BinaryIO, hashing)  # a file object: what the readers use of one
        start = handle.read(8)
        handle.seek(0)
        packed = next((kind for magic, kind in _PACKED.items() if start.startswith(magic)), None)
        if packed is not None:
            raise ArchiveUnreadable(
                f"{path}: a {packed} file, not an Avro container or JSON lines: unpack it, "
                "then sign what is unpacked"
            )
        if start.startswith(CONTAINER_MAGIC):
            yield from _container_records(path, handle)
        else:
            yield from _line_records(handle, kind)
        if sha256 is not None and hashing.digest() != sha256:
            raise ArchiveUnreadable(f"{path}: the file changed after its signature was checked")


class _Hashing(io.RawIOBase):
    """A file read once from its start, hashing what is read (`seek(0)` starts again)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("only a rewind")
        self._raw.seek(0)
        self._sha = hashlib.sha256()
        self._position = 0
        return 0

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self._sha.update(memoryview(buffer)[:count])
            self._position += count
        return int(count or 0)

    def readline(self, size: int | None = -1) -> bytes:
        line = self._raw.readline(-1 if size is None else size)
        self._sha.update(line)
        self._position += len(line)
        return line

    def digest(self) -> bytes:
        """The SHA-256 of the whole file, reading what is left unread."""
        while chunk := self.read(1 << 20):
            del chunk
        return self._sha.digest()


def _container_records(path: Path, handle: BinaryIO) -> Iterator[StagedRecord]:
    count = 0
    header_read = False
    try:
        writer = parse_schema(fastavro.reader(handle).writer_schema)
        header_read = True
        handle.seek(0)
        known = EVENT_CODEC.writer(_fingerprint(writer))
        # The fingerprint ignores logical types: the same shape with, say, microseconds
        # instead of the contract's milliseconds must be resolved, not taken as written.
        if known is not None and _logical_types(writer) == _logical_types(known.parsed):
            records = _as_written(handle, writer, MAGIC + known.fingerprint)
        else:  # another version: resolved to the current schema, and encoded with it
            records = _resolved(handle)
        for record in records:
            yield record
            count += 1
    except ArchiveUnreadable as exc:
        raise ArchiveUnreadable(f"{path}: {exc}") from None
    except Exception as exc:  # fastavro raises many kinds for a broken header or block
        where = f"the block holding record {count}" if header_read else "its header"
        raise ArchiveUnreadable(
            f"{path}: {where} cannot be read as RegistryEvent records "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _fingerprint(schema: Any) -> bytes:
    canonical = to_parsing_canonical_form(schema)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _logical_types(schema: Any) -> list[str | None]:
    """Every type's logical type, in the order of a walk of the schema."""
    found: list[str | None] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            found.append(node.get("logicalType"))
            for field in node.get("fields", ()):
                walk(field["type"])
            for inner in ("items", "values"):
                if inner in node:
                    walk(node[inner])
            if isinstance(node.get("type"), dict | list):
                walk(node["type"])

    walk(schema)
    return found


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
    occurred, recorded = datum["occurred_at"], datum["recorded_at"]
    if not isinstance(occurred, datetime) or not isinstance(recorded, datetime):
        raise ArchiveUnreadable(
            f"record {position}: occurred_at and recorded_at are not timestamps "
            "(the contract's timestamp-millis)"
        )
    return StagedRecord(
        position,
        datum.get("subject_pin") or "",
        _aware(occurred),
        _aware(recorded),
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
