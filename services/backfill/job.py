"""The backfill: registry archives into the central store, by the stream's own rules.

1. **Trust.** Each archive's detached signature is verified against the publisher
   directory before a record of it is read (`popsync.trust.archives`); a file that fails is
   refused whole, with one line saying why, and nothing of the run is staged.
2. **Stage.** Every record of every archive is COPYed into the run's UNLOGGED staging
   table, one transaction per file (`popsync.adapters.postgres.backfill`), then indexed in
   apply order: by subject key (the PIN), then event time.
3. **Apply.** The staging is read back in that order, in chunks, so each citizen's archive
   is one ordered pass. Each chunk goes through the validator's step (`ValidatorStep`:
   contract, rules, aliases, PIN allocation, sector matching, with the archive's signer as
   each record's publisher) and the synchronizer's merge (`SynchronizerStep.merge_batch`:
   the same fold, duplicates, conflicts and versions), without the daily cap, which
   defends the live stream. Then, in ONE transaction: the store's rows (`write_rows`, the
   synchronizer's own), the synchronizer's states (`save_states`) and the part's cursor,
   counts and dead-letter file length. A run killed anywhere resumes from its last commit:
   no record applied twice, no history row duplicated.

What a chunk must send first (dead letters, the validator's notices to registries and its
match reviews) is sent and confirmed before that transaction; a kill between the two sends
them again on resume (at least once, as the stream's runtime does). Dead letters carry the
same reasons and stages as the stream's; in a `--dead-letters` file, the lines past the
last commit are cut on resume, so the file holds each exactly once.

Errors follow the workers' policy (`popsync.runtime.processing`): an infrastructure fault
is retried with backoff; any other exception is a bug or a record no rule foresaw: the
chunk is split in halves until the record at fault is found, which is parked as
INTERNAL_ERROR, and the rest flows on.

The store's citizen-updates topic is not fed: the archive lands in the store directly,
and the stream carries what changes after it (an event of the archive that the stream also
carries is then a duplicate: applied once).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from popsync.adapters.postgres.backfill import (
    BackfillStore,
    Cursor,
    PartRecord,
    RunRecord,
    StagedRow,
    commit_part,
    defer,
)
from popsync.adapters.postgres.citizens import write_rows
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.sync_state import save_states
from popsync.contract import models as m
from popsync.runtime.deadletter import DEAD_LETTER_CODEC, dead_letter
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.runtime.ports import Producer
from popsync.runtime.processing import INTERNAL_ERROR, Rejected
from popsync.runtime.retry import RetryPolicy
from popsync.settings import Settings
from popsync.trust.archives import archive_topic
from popsync.trust.identity import SigningIdentity
from popsync.trust.signing import VERIFIED_KEY_HEADER, VERIFIED_PUBLISHER_HEADER

from ..synchronizer.step import BatchResult, Decoded, SynchronizerStep
from ..validator.step import ValidatorStep

log = logging.getLogger(__name__)
STAGE = "backfill"


@dataclass(frozen=True)
class Archive:
    """One archive of the run, its signer verified."""

    path: Path
    file_no: int
    sha256: str
    size: int
    signer: SigningIdentity

    @property
    def topic(self) -> str:
        return archive_topic(self.file_no, self.path.name)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "publisher": self.signer.publisher.publisher_id,
            "key_id": self.signer.key.key_id,
        }


def run_id_of(archives: Sequence[Archive]) -> str:
    """The run of these archives, in this order: their digests."""
    return hashlib.sha256("\n".join(a.sha256 for a in archives).encode()).hexdigest()


class DeadLetterSink(Protocol):
    """Where a run's dead letters go: the dead-letter topic, or a file."""

    async def send(self, letters: Sequence[OutboundMessage]) -> None: ...

    def committed_to(self, length: int) -> None:
        """Resume at `length` (what the last commit accounted for)."""

    @property
    def length(self) -> int: ...


class TopicSink:
    """Dead letters on the dead-letter topic, as the workers park theirs."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    async def send(self, letters: Sequence[OutboundMessage]) -> None:
        if letters:
            await self._producer.send_all(letters)

    def committed_to(self, length: int) -> None:
        """Nothing to cut: a resent letter is a repeat, as in the stream."""

    @property
    def length(self) -> int:
        return 0


class FileSink:
    """Dead letters as JSON lines in a file (`--dead-letters FILE`): one object per letter,
    the original key and bytes in base64, so nothing of the record is lost."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: IO[bytes] | None = None
        self._length = 0

    def committed_to(self, length: int) -> None:
        handle = self._open()
        handle.truncate(length)  # lines past the last commit are sent again
        handle.seek(length)
        self._length = length

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._handle = os.fdopen(fd, "r+b")
        return self._handle

    async def send(self, letters: Sequence[OutboundMessage]) -> None:
        if not letters:
            return
        handle = self._open()
        for letter in letters:
            line = json.dumps(letter_json(letter), ensure_ascii=False).encode() + b"\n"
            handle.write(line)
            self._length += len(line)
        handle.flush()
        os.fsync(handle.fileno())  # durable before the commit that counts it

    @property
    def length(self) -> int:
        return self._length

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def letter_json(letter: OutboundMessage) -> dict[str, Any]:
    """A dead letter as one JSON object (no personal data outside the original bytes)."""
    record: m.DeadLetter = DEAD_LETTER_CODEC.decode(letter.value)

    def b64(value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode()

    return {
        "stage": record.stage,
        "reason": record.reason_code,
        "message": record.message,
        "archive": record.original_topic,
        "position": record.original_offset,
        "event_id": record.event_id,
        "source": record.source,
        "failed_at": record.failed_at.isoformat(),
        "original_key": b64(record.original_key),
        "original_value": b64(record.original_value),
        "original_truncated": record.original_truncated,
        "original_size": record.original_size,
        "original_sha256": record.original_sha256,
    }


# What the apply pass reports as it goes: records done, and what they added to the counts.
Advance = Callable[[int, Counter[str]], None]


def _unreported(_records: int, _delta: Counter[str]) -> None:
    """No progress bar."""


@dataclass
class PartOutcome:
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class Applier:
    """Applies one part of a staged run, chunk by chunk (module doc, step 3)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BackfillStore,
        validator: ValidatorStep,
        synchronizer: SynchronizerStep,
        producer: Producer,
        sink: DeadLetterSink,
        archives: Sequence[Archive],
        *,
        chunk: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._db = db
        self._store = store
        self._validator = validator
        self._synchronizer = synchronizer
        self._producer = producer
        self._sink = sink
        self._topics = {a.file_no: a.topic for a in archives}
        self._chunk = chunk
        self._clock = clock
        self._retry = RetryPolicy(settings.processing, STAGE)
        self._committed = 0  # the dead-letter length the last commit accounted for

    async def apply(
        self, run: RunRecord, part: PartRecord, advance: Advance = _unreported
    ) -> PartOutcome:
        started = time.monotonic()
        counts: Counter[str] = Counter(part.counts)
        self._committed = part.dead_letter_bytes
        cursor = part.cursor
        while True:
            rows = await self._next_rows(run.run_id, part, cursor)
            if not rows:
                break
            before = counts.copy()
            await self._apply_rows(run.run_id, part, rows, counts)
            cursor = rows[-1].order
            advance(len(rows), counts - before)
        await self._commit(run.run_id, part, cursor, counts, finished=True)
        return PartOutcome(counts, time.monotonic() - started)

    async def _next_rows(self, run_id: str, part: PartRecord, after: Cursor) -> list[StagedRow]:
        return await self._retry.call(
            lambda: self._store.next_rows(run_id, part, after, self._chunk), STAGE
        )

    async def _apply_rows(
        self, run_id: str, part: PartRecord, rows: Sequence[StagedRow], counts: Counter[str]
    ) -> None:
        """Apply `rows` and commit past them, splitting them to park a record at fault."""
        try:
            await self._retry.call(lambda: self._attempt(run_id, part, rows, counts), STAGE)
        except Exception as exc:
            if len(rows) == 1:
                await self._park(run_id, part, rows[0], exc, counts)
                return
            middle = len(rows) // 2
            log.warning(
                "backfill: %s in a chunk of %d; splitting it to find the record at fault",
                type(exc).__name__,
                len(rows),
            )
            await self._apply_rows(run_id, part, rows[:middle], counts)
            await self._apply_rows(run_id, part, rows[middle:], counts)

    def _message(self, row: StagedRow) -> InboundMessage:
        r = row.record
        return InboundMessage(self._topics[row.file_no], 0, r.position, r.message_key, r.value)

    async def _attempt(
        self, run_id: str, part: PartRecord, rows: Sequence[StagedRow], counts: Counter[str]
    ) -> None:
        self._sink.committed_to(self._committed)  # a retried attempt sends its letters again
        now = self._clock()
        messages = [self._message(row) for row in rows]
        events = [i for i, row in enumerate(rows) if row.record.refused is None]
        letters: list[OutboundMessage] = []
        delta: Counter[str] = Counter(records=len(rows))
        for row, message in zip(rows, messages, strict=True):
            r = row.record
            if r.refused is not None:  # a line that is no event: parked as it was
                why = Rejected(r.refused, r.why or r.refused)
                letters.append(self._letter(message, why, "validator", now))
                delta[f"reason:{r.refused}"] += 1
        judged = await self._validator.judge([messages[i] for i in events])
        validated = judged.result
        for i, why in sorted(validated.rejected.items()):
            letters.append(self._letter(messages[events[i]], why, "validator", now))
            delta[f"reason:{why.reason}"] += 1
        passed = self._settings.topics.validated_events
        outputs = [o for o in validated.outputs if o.topic != passed]
        decoded: list[Decoded] = []
        deferred: list[tuple[str, StagedRow]] = []
        for i, output, event in judged.validated:
            pin = event.subject_pin or ""
            if part.takes(pin):
                decoded.append((len(decoded), _as_inbound(output), event))
            else:  # named by another identifier: its citizen is another part's
                deferred.append((pin, rows[events[i]]))
        result = BatchResult()
        merged = await self._synchronizer.merge_batch(decoded, result)
        for k, why in sorted(result.rejected.items()):
            letters.append(self._letter(decoded[k][1], why, "synchronizer", now))
            delta[f"reason:{why.reason}"] += 1
        delta.update(
            applied=len(result.applied),
            duplicates=result.duplicates,
            conflicts=len(result.conflict_codes),
            parked=len(letters),
            notices=len(outputs),
            deferred=len(deferred),
        )
        await self._sink.send(letters)
        if outputs:
            await self._producer.send_all(outputs)
        after = counts + delta
        async with self._db.transaction() as cur:
            await write_rows(cur, result.records)
            await save_states(cur, merged.changed_states())
            await defer(cur, run_id, deferred)
            await commit_part(cur, run_id, part.part, rows[-1].order, after, self._sink.length)
        self._committed = self._sink.length
        self._synchronizer.remember(merged)
        counts.update(delta)
        # The workers' metrics are not counted: a backfill has no /metrics to scrape (its
        # summary and --report say what it did), and counting cost ~10 µs a record.

    async def _park(
        self, run_id: str, part: PartRecord, row: StagedRow, exc: Exception, counts: Counter[str]
    ) -> None:
        """Dead-letter the one record a bug failed on; its exception type says which bug."""
        message = self._message(row)
        log.error(
            "backfill: parked %s@%d as %s (%s)",
            message.topic,
            message.offset,
            INTERNAL_ERROR,
            type(exc).__name__,
        )
        why = Rejected(INTERNAL_ERROR, f"{type(exc).__name__} in {STAGE}")
        letter = self._letter(message, why, STAGE, self._clock())
        delta = Counter({"records": 1, "parked": 1, f"reason:{INTERNAL_ERROR}": 1})
        after = counts + delta

        async def send_and_commit() -> None:
            self._sink.committed_to(self._committed)
            await self._sink.send([letter])
            await self._commit(run_id, part, row.order, after)

        await self._retry.call(send_and_commit, STAGE)
        counts.update(delta)

    async def _commit(
        self,
        run_id: str,
        part: PartRecord,
        cursor: Cursor,
        counts: Counter[str],
        *,
        finished: bool = False,
    ) -> None:
        async with self._db.transaction() as cur:
            await commit_part(
                cur, run_id, part.part, cursor, counts, self._sink.length, finished=finished
            )
        self._committed = self._sink.length

    def _letter(
        self, message: InboundMessage, why: Rejected, stage: str, now: datetime
    ) -> OutboundMessage:
        return dead_letter(
            message,
            topic=self._settings.topics.dead_letters,
            stage=stage,
            reason=why.reason,
            description=why.description,
            event=why.event,
            now=now,
        )


def _as_inbound(output: OutboundMessage) -> InboundMessage:
    """A validated event as the synchronizer would read it (its verified-signer headers,
    bytes as `identity_headers` made them)."""
    headers = tuple((n, v) for n, v in output.headers if n in _VERIFIED and isinstance(v, bytes))
    return InboundMessage(output.topic, 0, 0, output.key, output.value, headers)


_VERIFIED = frozenset((VERIFIED_PUBLISHER_HEADER, VERIFIED_KEY_HEADER))
