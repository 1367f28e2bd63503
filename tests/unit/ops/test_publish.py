"""`popsync publish`: every line is judged alone; no bytes, depth, size or number range
crashes it, and every good line is sent and flushed."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsync.contract import models as m
from popsync.contract.json_form import event_to_json
from popsync.ops import publish
from popsync.ops.publish import (
    EVENT_CODEC,
    MAX_JSON_DEPTH,
    BadLine,
    GoodLine,
    Publisher,
    judge_line,
    publish_jsonl,
    read_lines,
)
from popsync.runtime.messages import OutboundMessage
from popsync.topology import MAX_EVENT_BYTES
from tests.builders import PIN, birth_event

CIVIL = m.SourceRegistry.CIVIL_STATUS


class SentMessages:
    """A publisher's sink in memory: what was produced, and how often it was flushed."""

    def __init__(self) -> None:
        self.messages: list[OutboundMessage] = []
        self.flushes = 0

    def produce(self, message: OutboundMessage) -> None:
        self.messages.append(message)

    def flush_sync(self, timeout: float = 30.0) -> None:
        self.flushes += 1


def line(**fields: Any) -> bytes:
    """A birth's JSON line with `fields` replaced."""
    obj = event_to_json(birth_event())
    obj.update(fields)
    return json.dumps(obj, ensure_ascii=False).encode()


GOOD = line()


def judged(raw: bytes | None, number: int = 2) -> GoodLine | BadLine | None:
    return judge_line(number, raw, CIVIL)


def reason(raw: bytes | None, number: int = 2) -> str:
    result = judged(raw, number)
    assert isinstance(result, BadLine), result
    assert PIN not in result.message and PIN[3:] not in result.message  # no personal data
    return result.reason


def test_a_good_line_is_the_encoded_event_keyed_by_pin() -> None:
    good = judged(GOOD)
    assert isinstance(good, GoodLine)
    assert good.key == PIN.encode()
    assert EVENT_CODEC.decode(good.value) == birth_event()


def test_a_line_naming_its_subject_by_an_old_identifier_is_keyed_by_it() -> None:
    good = judged(line(subject_pin=None, subject_legacy_id="025123456"))
    assert isinstance(good, GoodLine)
    assert good.key == b"025123456"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(bytes(range(1, 256)), "NOT_UTF8", id="binary garbage"),
        pytest.param(GOOD.replace(b"Nguy\xe1\xbb\x85n", b"Nguy\xe1n"), "NOT_UTF8", id="bad utf-8"),
        pytest.param(GOOD[:20] + b"\x00" + GOOD[20:], "NUL_BYTE", id="nul byte"),
        pytest.param(b"[" * 200_000 + b"]" * 200_000, "TOO_DEEP", id="200k deep"),
        pytest.param(b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "TOO_DEEP", id="deep objects"),
        pytest.param(line(source_sequence=2**70), "NUMBER_OUT_OF_RANGE", id="2^70"),
        pytest.param(line(source_sequence=-(2**63) - 1), "NUMBER_OUT_OF_RANGE", id="below long"),
        pytest.param(line(schema_version=2**40), "NUMBER_OUT_OF_RANGE", id="wide avro int"),
        pytest.param(
            GOOD.replace(b'"source_sequence": 7', b'"source_sequence": ' + b"9" * 5000),
            "NUMBER_OUT_OF_RANGE",
            id="5000 digits",
        ),
        pytest.param(
            GOOD.replace(b'"source_sequence": 7', b'"source_sequence": 1e999'),
            "NUMBER_OUT_OF_RANGE",
            id="float overflow",
        ),
        pytest.param(
            GOOD.replace(b'"source_sequence": 7', b'"source_sequence": NaN'), "NOT_FINITE", id="NaN"
        ),
        pytest.param(
            GOOD.replace(b'"source_sequence": 7', b'"source_sequence": -Infinity'),
            "NOT_FINITE",
            id="-Infinity",
        ),
        pytest.param(
            GOOD.replace(b'"source_sequence": 7', b'"source_sequence": 7, "source_sequence": 8'),
            "DUPLICATE_KEY",
            id="duplicate key",
        ),
        pytest.param(
            GOOD.replace(b'"correlation_id": null', b'"correlation_id": "\\ud800"'),
            "NOT_UTF8",
            id="lone surrogate escape",
        ),
        pytest.param(line(correlation_id="x" * MAX_EVENT_BYTES), "EVENT_TOO_LARGE", id="2 MiB"),
        pytest.param(None, "LINE_TOO_LONG", id="too long to read"),
        pytest.param(b"{not json", "NOT_JSON", id="not json"),
        pytest.param(b"[1, 2]", "CONTRACT_VIOLATION", id="not an object"),
        pytest.param(line(source_sequence="seven"), "CONTRACT_VIOLATION", id="wrong type"),
        pytest.param(line(event_type="NOPE"), "EVENT_TYPE_UNKNOWN", id="unknown event type"),
        pytest.param(line(source_registry="RESIDENCE"), "SOURCE_MISMATCH", id="other source"),
        pytest.param(b"\xef\xbb\xbf" + GOOD, "NOT_JSON", id="BOM after line 1"),
    ],
)
def test_each_kind_of_bad_line_has_its_code(raw: bytes | None, code: str) -> None:
    assert reason(raw) == code


def test_a_duplicate_key_that_may_be_data_is_not_named() -> None:
    raw = GOOD[:-1] + f', "{PIN}": 1, "{PIN}": 2}}'.encode()
    result = judged(raw)
    assert isinstance(result, BadLine) and result.reason == "DUPLICATE_KEY"
    assert PIN not in result.message


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    deep_text = "[{" * MAX_JSON_DEPTH
    assert isinstance(judged(line(correlation_id=deep_text)), GoodLine)


def test_a_bom_is_accepted_on_the_first_line_and_blank_lines_are_skipped() -> None:
    assert isinstance(judged(b"\xef\xbb\xbf" + GOOD + b"\r\n", number=1), GoodLine)
    assert judged(b" \t\r\n") is None


def test_an_unforeseen_error_is_the_lines_error_with_its_type_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(_: Any) -> m.RegistryEvent:
        raise KeyError(PIN)

    monkeypatch.setattr(publish, "event_from_json", explode)
    result = judged(GOOD)
    assert result == BadLine(2, "LINE_UNREADABLE", "unexpected KeyError")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_crash_a_line(raw: bytes) -> None:
    assert judged(raw) is None or isinstance(judged(raw), BadLine | GoodLine)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=30,
    )
)
def test_no_json_value_crashes_a_line(value: Any) -> None:
    raw = json.dumps({**event_to_json(birth_event()), "payload": value}).encode()
    assert isinstance(judged(raw), BadLine | GoodLine)


class ReadSizes(io.BytesIO):
    """Bytes that remember the largest read asked for."""

    largest = 0

    def readline(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size or 0)
        return super().readline(size)


def test_a_line_too_long_is_skipped_to_its_newline_in_bounded_reads() -> None:
    limit = 100
    data = ReadSizes(b"a" * 50 + b"\n" + b"b" * (limit * 50) + b"\n" + b"c" * 100 + b"\n" + b"d")
    lines = list(read_lines(data, limit=limit))
    assert [(n, raw is None) for n, raw in lines] == [(1, False), (2, True), (3, False), (4, False)]
    assert lines[2][1] == b"c" * 100 + b"\n" and lines[3][1] == b"d"
    assert data.largest <= 1 << 20  # never the whole line


def test_publish_sends_every_good_line_reports_each_bad_one_and_flushes() -> None:
    other = line(event_id="2f1c7a52-0000-4000-8000-000000000002", subject_pin=None)
    data = b"\n".join(
        [b"\xef\xbb\xbf" + GOOD, b"\xff\xfe garbage", b"", other, b"[" * 100_000, GOOD]
    )
    sink, bad = SentMessages(), []
    report = publish_jsonl(Publisher(sink, "events"), io.BytesIO(data), CIVIL, bad.append)
    assert report.published == 3
    assert [(b.line_number, b.reason) for b in bad] == [(2, "NOT_UTF8"), (5, "TOO_DEEP")]
    assert report.bad_lines == 2 and report.refused == {"NOT_UTF8": 1, "TOO_DEEP": 1}
    assert [msg.key for msg in sink.messages] == [PIN.encode(), None, PIN.encode()]
    assert {msg.topic for msg in sink.messages} == {"events"}
    assert sink.flushes == 1


class BreaksAfter(io.BytesIO):
    """A file whose read fails after `lines` lines (a disk error half-way)."""

    def __init__(self, data: bytes, lines: int) -> None:
        super().__init__(data)
        self.left = lines

    def readline(self, size: int | None = -1) -> bytes:
        if self.left == 0:
            raise OSError("I/O error")
        self.left -= 1
        return super().readline(size)


def test_what_was_read_is_flushed_even_when_reading_fails_half_way() -> None:
    sink = SentMessages()
    with pytest.raises(OSError, match="I/O error"):
        publish_jsonl(
            Publisher(sink, "events"), BreaksAfter(GOOD + b"\n" + GOOD + b"\n", 1), CIVIL, print
        )
    assert len(sink.messages) == 1 and sink.flushes == 1
