"""Registry side: encode contract events and publish them, keyed by PIN.

Keying by PIN keeps one citizen's events in one partition, so they are read in
the order the registry sent them.

`popsync publish FILE` judges each line of a JSON-lines file alone: any bytes, depth,
size or number range in one line gives that line a reason code (`BadLine`, never a
crash), and every good line is published and flushed. Reading is bounded: the file is
read as bytes, line by line, and a line over `MAX_LINE_BYTES` is refused and skipped
to its newline without being held in memory.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate

from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError, to_avro_datum
from popsync.contract.json_form import event_from_json
from popsync.runtime.messages import OutboundMessage
from popsync.topology import MAX_EVENT_BYTES
from popsync.trust.signing import Signer, SignerSet

EVENT_CODEC = Codec(m.RegistryEvent)

# The JSON form of an event is larger than its Avro form (names, quotes, escapes): a line
# this long cannot hold an event under the limit, so it is not read whole.
MAX_LINE_BYTES = 4 * MAX_EVENT_BYTES
# The contract nests a few levels; checked before parsing, so no input can make the
# parser recurse deeply.
MAX_JSON_DEPTH = 32
_SKIP_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# Reason codes of a refused line, besides the contract's own (DecodeError.reason).
LINE_TOO_LONG = "LINE_TOO_LONG"
NOT_UTF8 = "NOT_UTF8"
NUL_BYTE = "NUL_BYTE"
TOO_DEEP = "TOO_DEEP"
NOT_JSON = "NOT_JSON"
NOT_FINITE = "NOT_FINITE"
DUPLICATE_KEY = "DUPLICATE_KEY"
NUMBER_OUT_OF_RANGE = "NUMBER_OUT_OF_RANGE"
SOURCE_MISMATCH = "SOURCE_MISMATCH"
EVENT_TOO_LARGE = "EVENT_TOO_LARGE"
LINE_UNREADABLE = "LINE_UNREADABLE"


@dataclass(frozen=True)
class BadLine:
    """A refused line: its number, a reason code and a message without personal data."""

    line_number: int
    reason: str
    message: str


@dataclass(frozen=True)
class GoodLine:
    """An accepted line, encoded: what is sent."""

    line_number: int
    key: bytes | None
    value: bytes
    event: m.RegistryEvent


@dataclass
class PublishReport:
    published: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by reason code

    @property
    def bad_lines(self) -> int:
        return self.refused.total()


class Sink(Protocol):
    """What a publisher sends through: `BatchProducer`, or a fake in tests."""

    def produce(self, message: OutboundMessage) -> None: ...

    def flush_sync(self, timeout: float = 30.0) -> None: ...


class Publisher:
    """Sends a registry's events; with a `signer`, each one signed (`popsync.trust.signing`)."""

    def __init__(
        self, producer: Sink, topic: str, signer: Signer | SignerSet | None = None
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._signer = signer

    def send(self, key: bytes | None, event: m.RegistryEvent) -> None:
        self.send_encoded(key, EVENT_CODEC.encode(event), event)

    def send_encoded(self, key: bytes | None, value: bytes, event: m.RegistryEvent) -> None:
        """`event` as already encoded (`value`), signed if this publisher signs."""
        headers = self._signer.headers(key, value, event) if self._signer else []
        self._producer.produce(OutboundMessage(self._topic, key, value, list(headers)))

    def send_raw(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Bytes (and headers) as they are: for replaying dead letters and testing bad input."""
        self._producer.produce(OutboundMessage(self._topic, key, value, list(headers)))

    def flush(self) -> None:
        self._producer.flush_sync(timeout=60)

    def publish(self, events: Iterable[tuple[bytes | None, m.RegistryEvent]]) -> int:
        count = 0
        for key, event in events:
            self.send(key, event)
            count += 1
        self.flush()
        return count


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_lines(handle: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(number, bytes) of each line of `handle`; None for a line over `limit` bytes, which
    is skipped to its newline in bounded chunks."""
    number = 0
    while chunk := handle.readline(limit + 1):
        number += 1
        if len(chunk) <= limit or chunk.endswith(b"\n"):
            yield number, chunk
            continue
        while (rest := handle.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
            pass
        yield number, None


def judge_line(
    number: int, raw: bytes | None, source: m.SourceRegistry
) -> GoodLine | BadLine | None:
    """One line as an encoded event, or why it is refused; None for a blank line.

    Never raises: an error nobody foresaw becomes the line's LINE_UNREADABLE.
    """
    try:
        return _judge(number, raw, source)
    except _Refused as refused:
        return BadLine(number, refused.reason, str(refused))
    except DecodeError as exc:
        return BadLine(number, exc.reason, str(exc))
    except Exception as exc:  # one line must not stop the others
        return BadLine(number, LINE_UNREADABLE, f"unexpected {type(exc).__name__}")


def _judge(number: int, raw: bytes | None, source: m.SourceRegistry) -> GoodLine | None:
    if raw is None:
        raise _Refused(LINE_TOO_LONG, f"line is longer than {MAX_LINE_BYTES} bytes")
    if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if not raw.strip():
        return None
    if b"\x00" in raw:
        raise _Refused(NUL_BYTE, "line contains a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refused(NOT_UTF8, f"line is not valid UTF-8 (byte {exc.start + 1})") from None
    _check_depth(text)
    wide: list[int] = []  # integers outside Avro int: checked against the schema below
    event = event_from_json(_parse(text, wide))
    if event.source_registry is not source:
        raise _Refused(
            SOURCE_MISMATCH,
            f"line is from {event.source_registry.value}, publishing as {source.value}",
        )
    value = _encode(event, checked=bool(wide))
    # Keyed by how the registry names the subject: its PIN, else its old identifier (the
    # validator checks that key against the alias it resolves).
    named = event.subject_pin or event.subject_legacy_id
    key = named.encode() if named else None
    return GoodLine(number, key, value, event)


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH; brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return  # cannot be deeper: the common case costs two counts
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise _Refused(TOO_DEEP, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _parse(text: str, wide: list[int]) -> Any:
    def parse_int(digits: str) -> int:
        # A long has at most 19 digits: longer text is refused before int() reads it.
        value = int(digits) if len(digits.lstrip("-")) <= 19 else None
        if value is None or not _LONG_RANGE[0] <= value <= _LONG_RANGE[1]:
            raise _Refused(NUMBER_OUT_OF_RANGE, "an integer is outside the Avro long range")
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            wide.append(value)
        return value

    def parse_float(digits: str) -> float:
        value = float(digits)
        if not math.isfinite(value):
            raise _Refused(NUMBER_OUT_OF_RANGE, "a number is outside the double range")
        return value

    try:
        return json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise _Refused(NOT_JSON, f"not JSON: {exc.msg} (column {exc.colno})") from None


def _refuse_constant(name: str) -> Any:
    raise _Refused(NOT_FINITE, f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        repeated = next(key for key, count in counts.items() if count > 1)
        # A field name is named; any other key might be data.
        name = repr(repeated) if _FIELD_NAME.fullmatch(repeated) else "a key"
        raise _Refused(DUPLICATE_KEY, f"{name} appears twice in one object")
    return obj


def _encode(event: m.RegistryEvent, *, checked: bool) -> bytes:
    if checked:  # fastavro writes an Avro int like a long: a wide one would pass unseen
        try:
            validate(to_avro_datum(event), EVENT_CODEC.schema.parsed, raise_errors=True)
        except AvroValidationError as exc:
            where = exc.errors[0].field.rsplit(".", 1)[-1] if exc.errors else "a field"
            raise _Refused(NUMBER_OUT_OF_RANGE, f"{where} is outside its Avro range") from None
    try:
        value = EVENT_CODEC.encode(event)
    except OverflowError:
        raise _Refused(NUMBER_OUT_OF_RANGE, "a number is outside its Avro range") from None
    except UnicodeEncodeError:
        raise _Refused(NOT_UTF8, "a string holds an unpaired surrogate escape") from None
    if len(value) > MAX_EVENT_BYTES:
        raise _Refused(
            EVENT_TOO_LARGE, f"event is {len(value)} bytes encoded; the limit is {MAX_EVENT_BYTES}"
        )
    return value


def read_jsonl(handle: BinaryIO, source: m.SourceRegistry) -> Iterator[GoodLine | BadLine]:
    """Each non-blank line of `handle` as an encoded event, or the reason it is not one."""
    for number, raw in read_lines(handle):
        judged = judge_line(number, raw, source)
        if judged is not None:
            yield judged


def publish_jsonl(
    publisher: Publisher,
    handle: BinaryIO,
    source: m.SourceRegistry,
    on_bad: Callable[[BadLine], None],
) -> PublishReport:
    """Publish every good line; each bad one goes to `on_bad` as it is met, and the rest
    still go. The good lines are flushed even if reading stops half-way."""
    report = PublishReport()
    try:
        for item in read_jsonl(handle, source):
            if isinstance(item, BadLine):
                report.refused[item.reason] += 1
                on_bad(item)
                continue
            publisher.send_encoded(item.key, item.value, item.event)
            report.published += 1
    finally:
        publisher.flush()
    return report
