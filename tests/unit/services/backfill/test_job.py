"""The backfill's apply pass (`services.backfill.job`) and its staging's keys
(`popsync.adapters.postgres.backfill`): dead-letter sinks, the letters' JSON form, the
parts' shares of the citizens, apply order, and the Applier on in-memory ports."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from popsync.adapters.postgres.backfill import (
    APPLY_ORDER,
    BUCKETS,
    Cursor,
    PartRecord,
    RunRecord,
    StagedRecord,
    StagedRow,
    bucket_of,
)
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.publishers import dev_keys, dev_publisher_id
from popsync.runtime.deadletter import DEAD_LETTER_CODEC, KEPT_VALUE_BYTES, dead_letter
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.settings import Settings
from popsync.topology import MAX_DEAD_LETTER_BYTES
from popsync.trust.archives import ArchiveVerifier
from popsync.trust.identity import SigningIdentity
from popsync.trust.verification import EventVerifier, TrustViolation
from services.backfill.job import (
    Applier,
    Archive,
    FileSink,
    TopicSink,
    letter_json,
    run_id_of,
)
from services.synchronizer.step import SynchronizerStep
from services.validator.step import ValidatorStep
from tests.builders import PIN, birth_event
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    InMemorySyncStates,
    RecordingProducer,
)

EVENTS = Codec(m.RegistryEvent)
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NAME = "Nguyễn Văn An"  # birth_event's subject: personal data
SETTINGS = Settings(processing={"retry_initial_seconds": 0.001, "retry_max_seconds": 0.004})


def _identity(kind: m.SourceRegistry) -> SigningIdentity:
    key, publisher = dev_keys()[f"{dev_publisher_id(kind)}-k1"]
    return SigningIdentity(publisher, key)


CIVIL = _identity(m.SourceRegistry.CIVIL_STATUS)
RESIDENCE = _identity(m.SourceRegistry.RESIDENCE)


def _archive(path: Path, file_no: int = 0, signer: SigningIdentity = CIVIL) -> Archive:
    return Archive(path, file_no, hashlib.sha256(str(path).encode()).hexdigest(), 10, signer)


# --- StagedRecord.message_key --------------------------------------------------------------


def _staged(key: str, reference: str | None) -> StagedRecord:
    return StagedRecord(0, key, NOW, NOW, b"v", reference=reference)


@pytest.mark.parametrize(
    ("key", "reference", "expected"),
    [
        (PIN, None, PIN.encode()),
        (PIN, "079123456", PIN.encode()),
        ("", "079123456", b"079123456"),
        ("", None, None),
        ("", "", None),
        ("", "Trần Thị Bình", "Trần Thị Bình".encode()),
    ],
    ids=["pin", "pin-over-reference", "reference", "nothing", "empty-reference", "utf-8"],
)
def test_the_message_key_is_the_pin_else_the_reference_else_none(
    key: str, reference: str | None, expected: bytes | None
) -> None:
    assert _staged(key, reference).message_key == expected


# --- parts: bucket_of and PartRecord.takes --------------------------------------------------


def _part(part: int, parts: int) -> PartRecord:
    return PartRecord(part, parts, Cursor(), {}, 0, False)


KEYS = ["", PIN, "079123456", "Trần", " 079203000123", *(f"0792030{n:05d}" for n in range(2000))]


def test_a_bucket_is_the_crc32_of_the_keys_utf8_within_the_buckets() -> None:
    assert all(0 <= bucket_of(key) < BUCKETS for key in KEYS)
    assert bucket_of("") == 0
    assert bucket_of(PIN) == zlib.crc32(PIN.encode()) % BUCKETS
    assert bucket_of("Trần") == zlib.crc32("Trần".encode()) % BUCKETS
    assert len({bucket_of(key) for key in KEYS}) > 1000  # the PINs spread


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 16])
def test_every_key_falls_in_exactly_one_part_and_the_last_pass_takes_all(parts: int) -> None:
    shares = [_part(p, parts) for p in range(parts)]
    last = _part(parts, parts)

    for key in KEYS:
        assert sum(share.takes(key) for share in shares) == 1, key
        assert last.takes(key)
    assert [share.last_pass for share in shares] == [False] * parts and last.last_pass
    taken = Counter(next(p.part for p in shares if p.takes(k)) for k in KEYS)
    assert len(taken) == parts  # each part has a share of 2,000 PINs


def test_a_part_takes_the_keys_the_staging_query_gives_it() -> None:
    """next_rows selects `bucket % parts = part` (PostgreSQL's % of a non-negative bucket):
    the same share as takes(), by which the Applier defers a resolved PIN."""
    for parts in (2, 5):
        for key in KEYS:
            assert [_part(p, parts).takes(key) for p in range(parts)] == [
                bucket_of(key) % parts == p for p in range(parts)
            ]


# --- apply order ------------------------------------------------------------------------------


def test_a_cursor_is_the_apply_order() -> None:
    assert Cursor._fields == APPLY_ORDER
    cursor = Cursor(PIN, NOW, NOW + timedelta(1), 2, 9)
    assert cursor.as_tuple() == tuple(getattr(cursor, name) for name in APPLY_ORDER)


def test_a_rows_place_is_its_key_times_file_and_position() -> None:
    row = StagedRow(3, StagedRecord(7, PIN, NOW, NOW + timedelta(1), b"v"))

    assert row.order == Cursor(PIN, NOW, NOW + timedelta(1), 3, 7)


def test_rows_sorted_by_their_cursors_are_in_the_sql_apply_order() -> None:
    t = [NOW + timedelta(minutes=n) for n in range(3)]
    rows = [
        StagedRow(file_no, StagedRecord(position, key, occurred, recorded, b"v"))
        for key in ("079203000002", "079203000001", "")
        for occurred in (t[2], t[0])
        for recorded in (t[1], t[0])
        for file_no in (1, 0)
        for position in (5, 0)
    ]
    by_columns = sorted(
        rows,
        key=lambda r: (
            r.record.key,
            r.record.occurred_at,
            r.record.recorded_at,
            r.file_no,
            r.record.position,
        ),
    )

    assert sorted(rows, key=lambda r: r.order.as_tuple()) == by_columns
    assert by_columns[0].order.as_tuple() == ("", t[0], t[0], 0, 0)


def test_the_first_cursor_is_before_every_record() -> None:
    earliest = datetime(1, 1, 1, tzinfo=UTC)
    for record in (
        StagedRecord(0, "", EPOCH, EPOCH, None, "NOT_JSON", "not JSON"),  # a refused line
        StagedRecord(0, "", earliest, earliest, b"v"),
        StagedRecord(1, "0", NOW, NOW, b"v"),
    ):
        assert Cursor().as_tuple() < StagedRow(0, record).order.as_tuple()


# --- FileSink -------------------------------------------------------------------------------


def _letter(
    n: int, key: bytes | None = PIN.encode(), value: bytes | None = None
) -> OutboundMessage:
    message = InboundMessage("archive:civil.avro", 0, n, key, value or f"record {n}".encode())
    return dead_letter(
        message,
        topic="dead-letters",
        stage="validator",
        reason="NOT_JSON",
        description=f"line {n} is not JSON",
        now=NOW,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_file_sink_appends_one_line_per_letter_and_fsyncs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "parked.jsonl"
    synced: list[bytes] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(path.read_bytes())  # what is on disk when it is made durable

    monkeypatch.setattr(os, "fsync", fsync)
    sink = FileSink(path)
    try:
        sink.committed_to(0)
        asyncio.run(sink.send([_letter(1), _letter(2)]))
        asyncio.run(sink.send([]))
        asyncio.run(sink.send([_letter(3)]))
    finally:
        sink.close()

    data = path.read_bytes()
    assert [line["position"] for line in _lines(path)] == [1, 2, 3]
    assert data.endswith(b"\n") and data.count(b"\n") == 3
    assert sink.length == len(data)
    assert synced == [data[: data.index(b"\n", data.index(b"\n") + 1) + 1], data]
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_sending_nothing_creates_no_file(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "parked.jsonl")

    asyncio.run(sink.send([]))

    assert not (tmp_path / "parked.jsonl").exists() and sink.length == 0


def test_a_retried_attempt_sends_its_letters_again_once_in_the_file(tmp_path: Path) -> None:
    """The Applier's order: cut to the last commit, send, commit; an attempt that fails after
    sending is cut away by the retry's first step."""
    path = tmp_path / "parked.jsonl"
    sink = FileSink(path)
    sink.committed_to(0)
    asyncio.run(sink.send([_letter(1), _letter(2)]))
    committed = sink.length  # the chunk's commit
    sink.committed_to(committed)
    asyncio.run(sink.send([_letter(3), _letter(4)]))  # its transaction fails
    sink.committed_to(committed)  # the retry
    asyncio.run(sink.send([_letter(3), _letter(4)]))
    sink.close()

    assert [line["position"] for line in _lines(path)] == [1, 2, 3, 4]
    assert sink.length == path.stat().st_size


def test_a_resumed_sink_cuts_what_the_killed_run_wrote_past_its_commit(tmp_path: Path) -> None:
    path = tmp_path / "parked.jsonl"
    killed = FileSink(path)
    killed.committed_to(0)
    asyncio.run(killed.send([_letter(1)]))
    committed = killed.length
    asyncio.run(killed.send([_letter(2), _letter(3)]))  # killed before its commit
    killed.close()

    resumed = FileSink(path)
    resumed.committed_to(committed)
    assert resumed.length == committed == path.stat().st_size
    asyncio.run(resumed.send([_letter(2), _letter(3)]))
    resumed.close()

    assert [line["position"] for line in _lines(path)] == [1, 2, 3]


def test_a_topic_sink_sends_letters_to_the_producer_and_cuts_nothing() -> None:
    producer = RecordingProducer()
    sink = TopicSink(producer)

    asyncio.run(sink.send([]))
    asyncio.run(sink.send([_letter(1), _letter(2)]))
    sink.committed_to(0)

    assert producer.calls == 1 and len(producer.sent) == 2 and sink.length == 0


# --- letter_json --------------------------------------------------------------------------------


def test_a_letter_as_json_carries_the_original_bytes_in_base64() -> None:
    event = birth_event()
    value = EVENTS.encode(event)
    message = InboundMessage("archive:civil.avro", 0, 41, PIN.encode(), value)
    letter = dead_letter(
        message,
        topic="dead-letters",
        stage="validator",
        reason="OCCURRED_IN_FUTURE",
        description="occurred_at is in the future",
        event=event,
        now=NOW,
        source="dev-civil-status",
    )

    out = letter_json(letter)

    assert set(out) == {
        "stage",
        "reason",
        "message",
        "archive",
        "position",
        "event_id",
        "source",
        "failed_at",
        "original_key",
        "original_value",
        "original_truncated",
        "original_size",
        "original_sha256",
    }
    assert base64.b64decode(out["original_key"]) == PIN.encode()
    assert base64.b64decode(out["original_value"]) == value
    assert (out["archive"], out["position"], out["event_id"]) == (
        "archive:civil.avro",
        41,
        event.event_id,
    )
    assert (out["stage"], out["reason"], out["source"]) == (
        "validator",
        "OCCURRED_IN_FUTURE",
        "dev-civil-status",
    )
    assert datetime.fromisoformat(out["failed_at"]) == NOW
    assert out["original_truncated"] is False
    outside = json.dumps({k: v for k, v in out.items() if not k.startswith("original_")})
    outside_unescaped = json.dumps(
        {k: v for k, v in out.items() if not k.startswith("original_")}, ensure_ascii=False
    )
    for personal in (PIN, NAME, "2003-01-02", "R-1"):
        assert personal not in outside and personal not in outside_unescaped
    assert json.loads(json.dumps(out)) == out


def test_a_refused_line_as_json_has_no_key_and_its_bytes() -> None:
    line = b'{"full_name": "' + NAME.encode() + b'", oops\n'
    letter = _letter(3, key=None, value=line)

    out = letter_json(letter)

    assert out["original_key"] is None and base64.b64decode(out["original_value"]) == line
    assert NAME not in json.dumps(out, ensure_ascii=False)


def test_a_letter_of_a_line_kept_without_bytes_has_no_value() -> None:
    message = InboundMessage("archive:civil.jsonl", 0, 8, None, None)
    letter = dead_letter(
        message, topic="d", stage="validator", reason="LINE_TOO_LONG", description="x", now=NOW
    )

    assert letter_json(letter)["original_value"] is None


def test_a_truncated_letter_as_json_says_what_its_original_was() -> None:
    value = b"\xc3\x01" + b"x" * MAX_DEAD_LETTER_BYTES
    letter = _letter(5, value=value)
    assert DEAD_LETTER_CODEC.decode(letter.value).original_truncated

    out = letter_json(letter)

    assert out["original_truncated"] is True
    assert len(base64.b64decode(out["original_value"])) == KEPT_VALUE_BYTES
    assert out.get("original_size") == len(value)
    assert out.get("original_sha256") == hashlib.sha256(value).hexdigest()


# --- archives of a run --------------------------------------------------------------------------


def test_a_run_is_named_by_its_archives_digests_in_order(tmp_path: Path) -> None:
    a, b = _archive(tmp_path / "a.avro", 0), _archive(tmp_path / "b.avro", 1)

    assert run_id_of([a, b]) == run_id_of([replace(a), replace(b)])
    assert run_id_of([a, b]) != run_id_of([b, a])
    assert len(run_id_of([a])) == 64


def test_an_archive_describes_its_name_digest_and_signer(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "civil.avro")

    assert archive.topic == "archive:0:civil.avro"
    assert archive.describe() == {
        "name": "civil.avro",
        "sha256": archive.sha256,
        "size": 10,
        "publisher": "dev-civil-status",
        "key_id": "dev-civil-status-k1",
    }


def test_two_archives_of_the_same_name_keep_their_own_signers(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    residence = _archive(tmp_path / "a" / "2020.avro", 0, RESIDENCE)
    civil = _archive(tmp_path / "b" / "2020.avro", 1, CIVIL)
    archives = [residence, civil]
    verifier = ArchiveVerifier({a.topic: a.signer for a in archives})  # as the run builds it
    event = birth_event()  # a civil-status event, in the residence registry's archive
    message = InboundMessage(residence.topic, 0, 0, PIN.encode(), EVENTS.encode(event))

    try:
        verifier.verify(message, event, NOW)
        reason = None
    except TrustViolation as exc:
        reason = exc.reason

    assert reason == "SOURCE_NOT_SIGNER"  # the residence registry may not publish a birth
    assert residence.topic != civil.topic


# --- the Applier, on in-memory ports ------------------------------------------------------------


class _Copy:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    async def __aenter__(self) -> _Copy:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    def set_types(self, _types: Sequence[str]) -> None:
        return None

    async def write_row(self, row: Sequence[Any]) -> None:
        self._rows.append(tuple(row))


class _Cursor:
    """What a transaction was asked: each statement (as text) with its parameters."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.copied: list[tuple[Any, ...]] = []

    async def execute(self, query: Any, params: Any = None) -> None:
        self.statements.append((str(query), params))

    def copy(self, _query: Any) -> _Copy:
        return _Copy(self.copied)


class _Database:
    """A database whose transactions keep what they were asked once committed;
    `lose_commits` makes the next commits fail as a lost connection does."""

    def __init__(self) -> None:
        self.committed: list[_Cursor] = []
        self.lose_commits = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Cursor]:
        cur = _Cursor()
        yield cur
        if self.lose_commits:
            self.lose_commits -= 1
            raise ConnectionError("the server went away before the commit")
        self.committed.append(cur)

    def part_commits(self) -> list[tuple[Any, ...]]:
        """The parameters of each committed `commit_part`, in order."""
        return [
            params
            for cur in self.committed
            for text, params in cur.statements
            if "UPDATE backfill_parts" in text
        ]


class _Staging:
    """`BackfillStore.next_rows` in memory: the part's rows after a cursor, in apply order."""

    def __init__(self, rows: Sequence[StagedRow]) -> None:
        self.rows = list(rows)

    async def next_rows(
        self, _run_id: str, part: PartRecord, after: Cursor, limit: int
    ) -> list[StagedRow]:
        mine = [
            row
            for row in self.rows
            if (part.parts == 1 or part.last_pass or part.takes(row.record.key))
            and row.order.as_tuple() > after.as_tuple()
        ]
        return sorted(mine, key=lambda row: row.order.as_tuple())[:limit]


def _births(count: int) -> list[m.RegistryEvent]:
    start = datetime(2003, 1, 2, 8, 30, tzinfo=UTC)
    return [
        birth_event(
            event_id=f"2f1c7a52-0000-4000-8000-{n:012d}",
            subject_pin=f"079203{n:06d}",
            occurred_at=start,
            recorded_at=start + timedelta(days=1),
            source_sequence=n,
        )
        for n in range(1, count + 1)
    ]


def _rows(events: Sequence[m.RegistryEvent], refused: Sequence[bytes] = ()) -> list[StagedRow]:
    rows = [
        StagedRow(
            0,
            StagedRecord(n, e.subject_pin or "", e.occurred_at, e.recorded_at, EVENTS.encode(e)),
        )
        for n, e in enumerate(events, start=1)
    ]
    for n, line in enumerate(refused, start=len(events) + 1):
        # a refused line sorts first (no key): it is staged for the last pass
        rows.append(StagedRow(0, StagedRecord(n, "", EPOCH, EPOCH, line, "NOT_JSON", "x")))
    return rows


class _Run:
    """One part of a run applied by an Applier on in-memory ports."""

    def __init__(self, tmp_path: Path, rows: Sequence[StagedRow], chunk: int = 2) -> None:
        self.archive = _archive(tmp_path / "civil.jsonl")
        self.db = _Database()
        self.staging = _Staging(rows)
        self.producer = RecordingProducer()
        self.aliases = InMemoryAliasDirectory()
        self.verifier: EventVerifier = ArchiveVerifier({self.archive.topic: self.archive.signer})
        self.path = tmp_path / "parked.jsonl.part-0"
        self.chunk = chunk
        self.judged: list[InboundMessage] = []

    def apply(self, part: PartRecord) -> Counter[str]:
        sink = FileSink(self.path)
        validator = ValidatorStep(
            SETTINGS,
            InMemoryPinAllocator(),
            self.aliases,
            InMemoryMatchingStore(),
            clock=lambda: NOW,
            verifier=self.verifier,
        )
        judge = validator.judge

        async def seen(batch: Sequence[InboundMessage]) -> Any:
            self.judged.extend(batch)
            return await judge(batch)

        validator.judge = seen  # type: ignore[method-assign]
        synchronizer = SynchronizerStep(
            SETTINGS.topics, SETTINGS.processing, InMemorySyncStates(), lambda: NOW, capped=False
        )
        applier = Applier(
            SETTINGS,
            self.db,  # type: ignore[arg-type]
            self.staging,  # type: ignore[arg-type]
            validator,
            synchronizer,
            self.producer,
            sink,
            [self.archive],
            chunk=self.chunk,
            clock=lambda: NOW,
        )
        run = RunRecord("run", None, None, False)
        try:
            outcome = asyncio.run(applier.apply(run, part))
        finally:
            sink.close()
        return outcome.counts

    def letters(self) -> list[dict[str, Any]]:
        return _lines(self.path) if self.path.exists() else []

    def written(self) -> set[str]:
        """Every text the committed transactions COPYed (rows, states, deferred records)."""
        return {
            v for cur in self.db.committed for row in cur.copied for v in row if isinstance(v, str)
        }


def test_an_applied_part_parks_its_bad_records_and_commits_its_counts(tmp_path: Path) -> None:
    births = _births(3)
    wrong_registry = births[2].model_copy(update={"source_registry": m.SourceRegistry.RESIDENCE})
    rows = _rows([births[0], births[1], wrong_registry], refused=[b"not json\n"])
    run = _Run(tmp_path, rows)

    counts = run.apply(_part(0, 1))

    assert (counts["records"], counts["applied"], counts["parked"]) == (4, 2, 2)
    assert counts["reason:NOT_JSON"] == counts["reason:SOURCE_NOT_SIGNER"] == 1
    letters = run.letters()
    assert [(x["reason"], x["position"]) for x in letters] == [
        ("NOT_JSON", 4),
        ("SOURCE_NOT_SIGNER", 3),
    ]
    assert base64.b64decode(letters[0]["original_value"]) == b"not json\n"
    final = run.db.part_commits()[-1]
    assert final[6] == run.path.stat().st_size  # the dead-letter length it accounts for
    assert json.loads(final[5]) == dict(counts) and final[7] is True
    assert {births[0].subject_pin, births[1].subject_pin} <= run.written()
    assert births[2].subject_pin not in run.written()


def test_the_validator_sees_each_record_as_a_message_of_its_archive(tmp_path: Path) -> None:
    births = _births(2)
    run = _Run(tmp_path, _rows(births, refused=[b"not json\n"]))

    run.apply(_part(0, 1))

    assert [(s.topic, s.offset, s.key) for s in run.judged] == [
        ("archive:0:civil.jsonl", 1, b"079203000001"),
        ("archive:0:civil.jsonl", 2, b"079203000002"),
    ]
    assert [s.value for s in run.judged] == [EVENTS.encode(e) for e in births]


def test_a_chunk_whose_commit_is_lost_is_retried_with_each_letter_once(tmp_path: Path) -> None:
    births = _births(4)
    run = _Run(tmp_path, _rows(births, refused=[b"not json\n", b"[1,\n"]))
    run.db.lose_commits = 1  # the first chunk's: the two refused lines, sorted first

    counts = run.apply(_part(0, 1))

    assert run.db.lose_commits == 0
    assert [x["position"] for x in run.letters()] == [5, 6]
    assert (counts["records"], counts["applied"], counts["parked"]) == (6, 4, 2)
    assert run.db.part_commits()[-1][6] == run.path.stat().st_size


def test_a_resumed_part_goes_on_from_its_cursor_and_cuts_the_letters_past_it(
    tmp_path: Path,
) -> None:
    rows = _rows(_births(4), refused=[b"not json\n"])
    first = _Run(tmp_path, rows, chunk=3)
    whole = first.apply(_part(0, 1))
    letters = first.path.read_bytes()
    commit = first.db.part_commits()[0]  # after the first chunk of 3
    # killed after that commit, with a letter of the next chunk written but not committed
    first.path.write_bytes(letters[: commit[6]] + b'{"uncommitted": true}\n')
    part = PartRecord(0, 1, Cursor(*commit[:5]), json.loads(commit[5]), commit[6], False)

    resumed = _Run(tmp_path, rows, chunk=3)
    again = resumed.apply(part)

    assert resumed.path.read_bytes() == letters
    assert [s.offset for s in resumed.judged] == [3, 4]  # only what the commit had not
    assert again["records"] == whole["records"] == 5
    assert again["parked"] == whole["parked"] == 1


class _FailingOn:
    """An archive verifier that fails, as a bug would, on one event id."""

    def __init__(self, inner: EventVerifier, event_id: str) -> None:
        self._inner = inner
        self._event_id = event_id

    async def refresh(self, *, force: bool = False) -> None:
        return None

    def verify(
        self, message: InboundMessage, event: m.RegistryEvent, now: datetime
    ) -> SigningIdentity:
        if event.event_id == self._event_id:
            raise RuntimeError("a bug")
        return self._inner.verify(message, event, now)


def test_a_record_a_bug_fails_on_is_parked_alone_and_the_rest_applied(tmp_path: Path) -> None:
    births = _births(5)
    run = _Run(tmp_path, _rows(births), chunk=5)
    run.verifier = _FailingOn(run.verifier, births[2].event_id)

    counts = run.apply(_part(0, 1))

    assert [(x["reason"], x["position"], x["stage"]) for x in run.letters()] == [
        ("INTERNAL_ERROR", 3, "backfill")
    ]
    assert (counts["records"], counts["applied"], counts["parked"]) == (5, 4, 1)
    assert births[2].subject_pin not in run.written()
    assert run.db.part_commits()[-1][6] == run.path.stat().st_size


def _pins_of_parts(parts: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {p: [] for p in range(parts)}
    for n in range(1, 200):
        pin = f"079203{n:06d}"
        found[bucket_of(pin) % parts].append(pin)
    return found


def test_a_record_resolved_to_another_parts_citizen_is_deferred_not_applied(
    tmp_path: Path,
) -> None:
    """A record names its subject by a PIN replaced since (an alias): its citizen is
    another part's, so this part leaves it to the last pass, under the current PIN."""
    pins = _pins_of_parts(2)
    mine, old, theirs = pins[0][0], pins[0][1], pins[1][0]
    start = datetime(2003, 1, 2, 8, 30, tzinfo=UTC)
    own = birth_event(subject_pin=mine, occurred_at=start, recorded_at=start)
    aliased = birth_event(
        event_id="2f1c7a52-0000-4000-8000-00000000aaaa",
        subject_pin=old,
        occurred_at=start,
        recorded_at=start,
    )
    other = birth_event(
        event_id="2f1c7a52-0000-4000-8000-00000000bbbb",
        subject_pin=theirs,
        occurred_at=start,
        recorded_at=start,
    )
    run = _Run(tmp_path, _rows([own, aliased, other]))
    run.aliases.pins[old] = theirs

    counts = run.apply(_part(0, 2))

    assert [s.key for s in run.judged] == [mine.encode(), old.encode()]  # not the other's
    assert (counts["records"], counts["applied"], counts["deferred"]) == (2, 1, 1)
    deferred = [row for cur in run.db.committed for row in cur.copied if row[2] == theirs]
    assert [(row[0], row[1], row[3]) for row in deferred] == [(0, 2, bucket_of(theirs))]
    assert run.letters() == []
