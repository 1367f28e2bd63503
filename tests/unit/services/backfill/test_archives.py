"""Reading a registry's archive (`services.backfill.archives`): an Avro object container
file record by record (as written when the contract knows its writer schema, resolved to
the current schema otherwise), or JSON lines judged as `popsync publish` judges them."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest

from popsync.contract import models as m
from popsync.contract.codec import MAGIC, Codec, to_avro_datum
from popsync.contract.json_form import event_to_json
from popsync.contract.schemas import contract_schema, earlier_versions
from popsync.ops.publish import MAX_LINE_BYTES
from services.backfill.archives import ArchiveUnreadable, is_container, read_archive
from tests.builders import birth_event

EVENTS = Codec(m.RegistryEvent)
CURRENT = contract_schema("RegistryEvent")
(V1,) = earlier_versions("RegistryEvent")
CIVIL = m.SourceRegistry.CIVIL_STATUS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _events(count: int) -> list[m.RegistryEvent]:
    """Births of `count` citizens, each a minute after the other."""
    start = datetime(2003, 1, 2, 8, 30, tzinfo=UTC)
    return [
        birth_event(
            event_id=f"2f1c7a52-0000-4000-8000-{n:012d}",
            subject_pin=f"079203{n:06d}",
            occurred_at=start + timedelta(minutes=n),
            recorded_at=start + timedelta(days=1, minutes=n),
            source_sequence=n,
        )
        for n in range(count)
    ]


def _plain(schema: Any) -> Any:
    """A parsed schema as plain JSON (fastavro's own markers removed), to edit and write."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _container(
    path: Path,
    datums: Iterable[dict[str, Any]],
    schema: Any = None,
    codec: str = "null",
    sync_interval: int = 400,
) -> bytes:
    """An object container file of `datums` (several records a block, several blocks)."""
    with path.open("wb") as handle:
        fastavro.writer(
            handle,
            _plain(CURRENT.parsed) if schema is None else schema,
            list(datums),
            codec=codec,
            sync_interval=sync_interval,
        )
    return path.read_bytes()


def _header_size(data: bytes) -> int:
    handle = io.BytesIO(data)
    fastavro.reader(handle)
    return handle.tell()


def _block_ends(data: bytes) -> list[int]:
    """Where each block ends (after its sync marker), the header's end first."""
    header = _header_size(data)
    sync = data[header - 16 : header]
    ends, at = [header], header
    while (found := data.find(sync, at)) != -1:
        ends.append(found + 16)
        at = found + 16
    return sorted(set(ends))


def _read(path: Path) -> list[Any]:
    return list(read_archive(path, CIVIL))


def _unreadable(path: Path) -> str:
    with pytest.raises(ArchiveUnreadable) as caught:
        _read(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert caught.value.__cause__ is None
    return message


# --- Avro object container files ------------------------------------------------------------


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_records_come_back_in_file_order_as_the_stream_carries_them(
    tmp_path: Path, codec: str
) -> None:
    events = _events(12)
    data = _container(tmp_path / "civil.avro", map(to_avro_datum, events), codec=codec)
    assert len(_block_ends(data)) > 3  # several blocks

    records = _read(tmp_path / "civil.avro")

    assert [r.position for r in records] == list(range(12))
    assert [r.key for r in records] == [e.subject_pin for e in events]
    assert [r.occurred_at for r in records] == [e.occurred_at for e in events]
    assert [r.recorded_at for r in records] == [e.recorded_at for e in events]
    assert all(r.occurred_at.tzinfo is not None and r.recorded_at.tzinfo for r in records)
    assert all(r.refused is None and r.why is None and r.reference is None for r in records)
    # As written (the fast path): the contract's single-object bytes of the same event.
    assert all(r.value[: len(MAGIC) + 8] == MAGIC + CURRENT.fingerprint for r in records)
    assert [EVENTS.decode(r.value) for r in records] == events
    assert [r.value for r in records] == [EVENTS.encode(e) for e in events]


def test_a_record_without_a_pin_has_no_key_and_names_its_legacy_id(tmp_path: Path) -> None:
    pinless = birth_event(subject_pin=None, subject_legacy_id="079123456")
    _container(tmp_path / "civil.avro", [to_avro_datum(pinless)])

    (record,) = _read(tmp_path / "civil.avro")

    assert (record.key, record.reference) == ("", "079123456")
    assert record.message_key == b"079123456"
    assert EVENTS.decode(record.value) == pinless


def test_a_container_of_an_earlier_contract_version_is_read_as_written(tmp_path: Path) -> None:
    """schemas/avro/previous: the value keeps that version's fingerprint and still decodes."""
    events = _events(5)
    old = [
        {
            **e.model_dump(mode="python", exclude={"payload", "subject_legacy_id"}),
            "payload": (type(e.payload).AVRO_NAME, e.payload.model_dump()),
        }
        for e in events
    ]
    _container(tmp_path / "v1.avro", old, schema=_plain(V1.parsed))

    records = _read(tmp_path / "v1.avro")

    assert [r.position for r in records] == list(range(5))
    assert all(r.value[2:10] == V1.fingerprint != CURRENT.fingerprint for r in records)
    assert [EVENTS.decode(r.value) for r in records] == events
    assert [r.key for r in records] == [e.subject_pin for e in events]
    assert all(r.reference is None for r in records)


def _unknown_but_resolvable() -> Any:
    """The current schema with a field of the registry's own (defaulted) and the envelope's
    fields in another order: a schema the contract does not know, that resolves to it."""
    schema = _plain(CURRENT.parsed)
    fields = schema["fields"]
    schema["fields"] = [
        *reversed(fields[:4]),
        {"name": "export_batch", "type": "string", "default": ""},
        *fields[4:],
    ]
    return schema


def test_a_container_of_an_unknown_resolvable_schema_is_resolved_to_the_current(
    tmp_path: Path,
) -> None:
    events = [*_events(4), birth_event(subject_pin=None, subject_legacy_id="079123456")]
    datums = [{**to_avro_datum(e), "export_batch": "2026-11"} for e in events]
    _container(tmp_path / "other.avro", datums, schema=_unknown_but_resolvable())

    records = _read(tmp_path / "other.avro")

    assert [r.position for r in records] == list(range(5))
    assert all(r.value[2:10] == CURRENT.fingerprint for r in records)
    assert [EVENTS.decode(r.value) for r in records] == events
    assert [r.value for r in records] == [EVENTS.encode(e) for e in events]
    assert [r.key for r in records] == [*(e.subject_pin for e in events[:4]), ""]
    assert records[-1].reference == "079123456"
    assert all(r.occurred_at.tzinfo is not None for r in records)


def test_a_container_of_another_record_type_is_unreadable(tmp_path: Path) -> None:
    letter = contract_schema("DeadLetter")
    datum = {
        "original_topic": "t",
        "original_partition": 0,
        "original_offset": 0,
        "stage": "validator",
        "reason_code": "X",
        "message": "x",
        "failed_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    _container(tmp_path / "letters.avro", [datum], schema=_plain(letter.parsed))

    assert "cannot be read as RegistryEvent records" in _unreadable(tmp_path / "letters.avro")


def test_an_empty_container_yields_nothing(tmp_path: Path) -> None:
    _container(tmp_path / "empty.avro", [])

    assert is_container(tmp_path / "empty.avro")
    assert _read(tmp_path / "empty.avro") == []


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_a_container_truncated_mid_block_is_unreadable_after_the_blocks_before(
    tmp_path: Path, codec: str
) -> None:
    data = _container(tmp_path / "whole.avro", map(to_avro_datum, _events(12)), codec=codec)
    ends = _block_ends(data)
    path = tmp_path / "cut.avro"
    for cut in (ends[2] - 20, ends[2] + 5, len(data) - 1, ends[0] + 1):
        path.write_bytes(data[:cut])
        records = read_archive(path, CIVIL)
        read: list[int] = []
        with pytest.raises(ArchiveUnreadable) as caught:
            read.extend(r.position for r in records)
        assert str(path) in str(caught.value)
        assert read == list(range(len(read)))  # what came first is whole and in order


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 40,
        b"\x02\xfe\xff\xff\xff\x0f" + b"x" * 30,  # a block of 2 GiB in 30 bytes
        b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01\x02" + b"x" * 30,
        *(random.Random(seed).randbytes(300) for seed in range(4)),
    ],
    ids=["zeros", "huge-block", "huge-count", "random-0", "random-1", "random-2", "random-3"],
)
@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_garbage_after_the_header_is_unreadable(tmp_path: Path, garbage: bytes, codec: str) -> None:
    data = _container(tmp_path / "whole.avro", map(to_avro_datum, _events(3)), codec=codec)
    path = tmp_path / "garbage.avro"
    path.write_bytes(data[: _header_size(data)] + garbage)

    assert "cannot be read" in _unreadable(path)


def test_garbage_after_the_last_block_is_unreadable(tmp_path: Path) -> None:
    data = _container(tmp_path / "whole.avro", map(to_avro_datum, _events(5)))
    path = tmp_path / "tail.avro"
    path.write_bytes(data + b"not avro")

    assert "cannot be read" in _unreadable(path)


@pytest.mark.parametrize("block", [1, 2])
def test_a_wrong_sync_marker_is_unreadable(tmp_path: Path, block: int) -> None:
    data = bytearray(_container(tmp_path / "whole.avro", map(to_avro_datum, _events(12))))
    ends = _block_ends(bytes(data))
    data[ends[block] - 3] ^= 0xFF  # inside the sync marker closing that block
    path = tmp_path / "sync.avro"
    path.write_bytes(bytes(data))

    assert "cannot be read" in _unreadable(path)


@pytest.mark.parametrize(
    "content",
    [b"Obj\x01", b"Obj\x01" + b"nonsense" * 10, b"Obj\x01\x00\x00\x00", b"Obj\x01" + b"\xff" * 64],
    ids=["magic-only", "magic-then-text", "magic-then-zeros", "magic-then-ff"],
)
def test_a_file_that_only_starts_like_a_container_is_unreadable(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "fake.avro"
    path.write_bytes(content)

    assert is_container(path)
    assert "its header cannot be read" in _unreadable(path)


def test_a_binary_file_that_is_no_container_is_unreadable(tmp_path: Path) -> None:
    data = _container(tmp_path / "civil.avro", map(to_avro_datum, _events(40)))
    path = tmp_path / "civil.avro.gz"
    path.write_bytes(gzip.compress(data, mtime=0))

    try:
        outcome: object = _read(path)
    except ArchiveUnreadable as exc:
        outcome = exc

    assert isinstance(outcome, ArchiveUnreadable), outcome


def _with_time_type(time_type: Any) -> Any:
    schema = _plain(CURRENT.parsed)
    for field in schema["fields"]:
        if field["name"] in ("occurred_at", "recorded_at"):
            field["type"] = copy.deepcopy(time_type)
    return schema


def test_a_container_with_microsecond_timestamps_decodes_to_its_own_times(
    tmp_path: Path,
) -> None:
    events = _events(3)
    schema = _with_time_type({"type": "long", "logicalType": "timestamp-micros"})
    _container(tmp_path / "micros.avro", map(to_avro_datum, events), schema=schema)

    records = _read(tmp_path / "micros.avro")

    assert [r.occurred_at for r in records] == [e.occurred_at for e in events]
    assert [EVENTS.decode(r.value).occurred_at for r in records] == [e.occurred_at for e in events]


def test_a_container_whose_times_carry_no_logical_type_is_refused_clearly(
    tmp_path: Path,
) -> None:
    """Plain longs have the contract's fingerprint (it ignores logical types) but are not
    its timestamp-millis: the archive is refused, naming the file and the times, never read
    as if they were."""
    events = _events(3)
    datums = []
    for event in events:
        datum = to_avro_datum(event)
        for name in ("occurred_at", "recorded_at"):
            datum[name] = int(getattr(event, name).timestamp() * 1000)
        datums.append(datum)
    _container(tmp_path / "plain.avro", datums, schema=_with_time_type("long"))

    message = _unreadable(tmp_path / "plain.avro")

    assert "plain.avro" in message and "timestamp" in message
    assert "header" not in message


def test_a_broken_first_block_is_not_reported_as_a_broken_header(tmp_path: Path) -> None:
    data = bytearray(_container(tmp_path / "whole.avro", map(to_avro_datum, _events(12))))
    ends = _block_ends(bytes(data))
    data[ends[1] - 3] ^= 0xFF
    path = tmp_path / "sync.avro"
    path.write_bytes(bytes(data))

    assert "header" not in _unreadable(path)


# --- JSON lines -------------------------------------------------------------------------------


def _line(event: m.RegistryEvent) -> bytes:
    return json.dumps(event_to_json(event), ensure_ascii=False).encode() + b"\n"


def _jsonl(path: Path, lines: Sequence[bytes]) -> list[Any]:
    path.write_bytes(b"".join(lines))
    assert not is_container(path)
    return _read(path)


def test_good_lines_are_staged_with_their_line_numbers(tmp_path: Path) -> None:
    events = _events(3)
    pinless = birth_event(subject_pin=None, subject_legacy_id="079123456")

    records = _jsonl(tmp_path / "civil.jsonl", [*map(_line, events), _line(pinless)])

    assert [r.position for r in records] == [1, 2, 3, 4]
    assert [r.key for r in records] == [*(e.subject_pin for e in events), ""]
    assert records[-1].reference == "079123456" and records[0].reference is None
    assert [r.occurred_at for r in records] == [e.occurred_at for e in [*events, pinless]]
    assert [r.recorded_at for r in records] == [e.recorded_at for e in [*events, pinless]]
    assert all(r.occurred_at.tzinfo is not None for r in records)
    assert all(r.refused is None for r in records)
    assert [EVENTS.decode(r.value) for r in records] == [*events, pinless]


def test_times_with_an_offset_are_staged_as_the_same_instants(tmp_path: Path) -> None:
    event = _events(1)[0]
    form = event_to_json(event)
    form["occurred_at"] = "2003-01-02T15:30:00+07:00"  # 08:30 UTC

    (record,) = _jsonl(tmp_path / "civil.jsonl", [json.dumps(form).encode()])

    assert record.occurred_at == event.occurred_at


def _another_registrys() -> bytes:
    return _line(birth_event(source_registry=m.SourceRegistry.RESIDENCE))


BAD_LINES = {
    "NOT_JSON": b"not json\n",
    "NUL_BYTE": b'{"event_id": "a"}\x00\n',
    "TOO_DEEP": b"[" * 40 + b"]" * 40 + b"\n",
    "DUPLICATE_KEY": b'{"a": 1, "a": 2}\n',
    "NOT_UTF8": b'{"full_name": "Nguy\xe1n"}\n',
    "NOT_FINITE": b'{"source_sequence": NaN}\n',
    "SOURCE_MISMATCH": _another_registrys(),
    "EVENT_TYPE_UNKNOWN": b'{"event_id": "only this"}\n',
}


@pytest.mark.parametrize(("reason", "line"), BAD_LINES.items(), ids=BAD_LINES.keys())
def test_a_bad_line_is_staged_refused_with_its_reason_and_original_bytes(
    tmp_path: Path, reason: str, line: bytes
) -> None:
    good = _events(2)

    records = _jsonl(tmp_path / "civil.jsonl", [_line(good[0]), line, _line(good[1])])

    assert [r.position for r in records] == [1, 2, 3]
    bad = records[1]
    assert (bad.refused, bad.value, bad.key, bad.reference) == (reason, line, "", None)
    assert bad.why and "\n" not in bad.why
    assert bad.occurred_at == bad.recorded_at == EPOCH
    assert bad.message_key is None
    assert [EVENTS.decode(records[i].value) for i in (0, 2)] == good


def test_an_overlong_line_is_refused_without_being_held_and_the_next_line_read(
    tmp_path: Path,
) -> None:
    """The line is not read whole (publish's bounded reading): it is staged without bytes."""
    event = _events(1)[0]
    long = b'{"x": "' + b"a" * MAX_LINE_BYTES + b'"}\n'

    records = _jsonl(tmp_path / "civil.jsonl", [long, _line(event)])

    assert [(r.position, r.refused) for r in records] == [(1, "LINE_TOO_LONG"), (2, None)]
    assert records[0].value is None
    assert EVENTS.decode(records[1].value) == event


def test_blank_lines_are_skipped_and_still_counted(tmp_path: Path) -> None:
    a, b = _events(2)

    records = _jsonl(tmp_path / "civil.jsonl", [b"\n", _line(a), b"   \t\r\n", b"\n", _line(b)])

    assert [r.position for r in records] == [2, 5]
    assert [EVENTS.decode(r.value) for r in records] == [a, b]


def test_a_byte_order_mark_on_the_first_line_is_skipped(tmp_path: Path) -> None:
    a, b = _events(2)

    records = _jsonl(tmp_path / "civil.jsonl", [b"\xef\xbb\xbf" + _line(a), _line(b)])

    assert [(r.position, r.refused) for r in records] == [(1, None), (2, None)]
    assert EVENTS.decode(records[0].value) == a


def test_a_byte_order_mark_on_a_later_line_is_refused_with_it(tmp_path: Path) -> None:
    a, b = _events(2)
    marked = b"\xef\xbb\xbf" + _line(b)

    records = _jsonl(tmp_path / "civil.jsonl", [_line(a), marked])

    assert (records[1].refused, records[1].value) == ("NOT_JSON", marked)


def test_a_refused_first_line_keeps_its_byte_order_mark(tmp_path: Path) -> None:
    line = b"\xef\xbb\xbfnot json\n"

    (record,) = _jsonl(tmp_path / "civil.jsonl", [line])

    assert (record.refused, record.value) == ("NOT_JSON", line)


def test_crlf_endings_and_a_last_line_without_newline_are_read(tmp_path: Path) -> None:
    a, b = _events(2)

    records = _jsonl(tmp_path / "civil.jsonl", [_line(a)[:-1] + b"\r\n", _line(b)[:-1]])

    assert [EVENTS.decode(r.value) for r in records] == [a, b]


def test_an_empty_file_yields_nothing(tmp_path: Path) -> None:
    assert _jsonl(tmp_path / "empty.jsonl", []) == []


def test_a_compressed_archive_is_refused_by_name(tmp_path: Path) -> None:
    whole = _container(tmp_path / "whole.avro", map(to_avro_datum, _events(3)))
    packed = tmp_path / "civil.avro.gz"
    packed.write_bytes(gzip.compress(whole))

    assert "gzip" in _unreadable(packed)


def test_a_file_changed_after_its_signature_was_checked_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "civil.avro"
    _container(path, map(to_avro_datum, _events(5)))
    checked = hashlib.sha256(path.read_bytes()).digest()

    assert len(list(read_archive(path, CIVIL, checked))) == 5  # the file as it was checked
    _container(path, map(to_avro_datum, _events(6)))  # then replaced before it is read
    with pytest.raises(ArchiveUnreadable, match="changed after its signature"):
        list(read_archive(path, CIVIL, checked))


def test_json_lines_are_hashed_as_read(tmp_path: Path) -> None:
    path = tmp_path / "civil.jsonl"
    path.write_bytes(b"".join(_line(e) for e in _events(3)))

    digest = hashlib.sha256(path.read_bytes()).digest()

    assert len(list(read_archive(path, CIVIL, digest))) == 3
