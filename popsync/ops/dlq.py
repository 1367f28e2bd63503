"""`popsync dlq list` and `popsync dlq replay`: what is parked, and sending it back after a fix.

Both read the whole dead-letter topic from its beginning to its end *at the time
of the call*. The end of each partition is where the consumer reports partition
EOF (`enable.partition.eof`, i.e. the high-water mark of a fetch), never the
broker's ListOffsets answer, which some Kafka-protocol brokers get wrong.
Nothing is committed: the commands never join a consumer group.

`replay` re-publishes each selected dead letter's *original* key and value bytes
to its original topic and partition, with headers naming the dead letter it came
from (`popsync.replay.*`), through an idempotent producer. A replayed event is
processed exactly like the first time: the stage that parked it checks it again,
and if it still fails it is parked again, as a new dead letter. The dead-letter
topic is append-only, so a replayed letter stays listed.

Replaying the same dead letter twice is harmless: the validator turns the same
bytes into the same normalized event, and the synchronizer treats an event id it
already holds with the same content as a no-op (no update, no history row, no new
version); an event id reused with other content is a conflict, never applied.
A dead letter whose original value is null (an empty message) cannot be replayed:
it is skipped and reported; nor can one parked in its small form (an original too large
to keep whole, `original_truncated`): `list` names each of those with its size and
SHA-256, so the registry can find the event it must send again, smaller.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from confluent_kafka import KafkaError, Producer
from tqdm import tqdm

from popsync.adapters.kafka.producer import producer_config
from popsync.adapters.kafka.reader import TopicReadError, read_to_end
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.domain.provinces import admin_code
from popsync.domain.reasons import is_retryable
from popsync.runtime.messages import Headers
from popsync.runtime.sources import UNIDENTIFIED
from popsync.settings import Settings

REPLAY_HEADER_PREFIX = "popsync.replay."
DEAD_LETTER_CODEC = Codec(m.DeadLetter)  # not popsync.runtime.deadletter's: keep the CLI light


class DlqError(TopicReadError):
    """The dead-letter topic could not be read, or a replay could not be sent."""


@dataclass(frozen=True)
class Parked:
    """One dead letter and where it sits on the dead-letter topic."""

    partition: int
    offset: int
    letter: m.DeadLetter


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on; an empty field means "any"."""

    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    retryable: bool = False  # only reasons that may pass unchanged later (domain.reasons)

    @property
    def everything(self) -> bool:
        return self == Selection()

    def matches(self, letter: m.DeadLetter) -> bool:
        return (
            (not self.reasons or letter.reason_code in self.reasons)
            and (not self.stages or letter.stage in self.stages)
            and (not self.sources or bool(self.sources & _source_names(letter)))
            and (self.since is None or letter.failed_at >= self.since)
            and (self.until is None or letter.failed_at < self.until)
            and (not self.retryable or is_retryable(letter.reason_code))
        )


def _source_names(letter: m.DeadLetter) -> set[str]:
    """What `--source` may name a letter by: the source it was judged by (its verified
    publisher, as a quarantine names it, or unverified / unidentified), its declared
    registry, or registry/province."""
    judged = {letter.source} if letter.source else set()
    if letter.source_registry is None:
        return {UNIDENTIFIED, *judged}
    province = admin_code(letter.source_province or "") or "?"
    return {letter.source_registry, f"{letter.source_registry}/{province}", *judged}


@dataclass
class Scan:
    """What reading the dead-letter topic found."""

    topic: str
    letters: list[Parked] = field(default_factory=list)
    total: int = 0  # distinct dead letters on the topic, selected or not
    repeated: int = 0  # the same original message parked again (a re-delivered batch)
    undecodable: int = 0  # records on the topic that are not dead letters


def scan(settings: Settings, selection: Selection, timeout: float = 60.0) -> Scan:
    """The dead letters `selection` matches, read up to the current end of the topic."""
    found = Scan(settings.topics.dead_letters)
    seen: set[tuple[str, str, int, int]] = set()
    for partition, offset, value in read_to_end(settings.kafka, found.topic, timeout):
        try:
            letter = DEAD_LETTER_CODEC.decode(value)
        except DecodeError:
            found.undecodable += 1
            continue
        # At-least-once delivery can park one message twice; it counts, and replays, once.
        origin = (letter.stage, letter.original_topic, letter.original_partition)
        if (*origin, letter.original_offset) in seen:
            found.repeated += 1
            continue
        seen.add((*origin, letter.original_offset))
        found.total += 1
        if selection.matches(letter):
            found.letters.append(Parked(partition, offset, letter))
    return found


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(title: str, counts: Counter[str], out: TextIO) -> None:
    print(f"by {title}:", file=out)
    width = max(len(str(n)) for n in counts.values())
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:>{width}}  {name}", file=out)


def summarize(letters: list[Parked], out: TextIO) -> None:
    """Counts by reason, stage, source registry and original topic; no personal data."""
    if not letters:
        return
    failed = [p.letter.failed_at for p in letters]
    print(f"failed between {_when(min(failed))} and {_when(max(failed))}", file=out)
    _table("reason", Counter(p.letter.reason_code for p in letters), out)
    _table("stage", Counter(p.letter.stage for p in letters), out)
    sources = Counter(p.letter.source_registry or "(unknown)" for p in letters)
    _table("source registry", sources, out)
    _table("original topic", Counter(p.letter.original_topic for p in letters), out)
    _list_truncated(letters, out)


def _list_truncated(letters: list[Parked], out: TextIO) -> None:
    """Each letter parked in its small form, by what identifies its original (no content)."""
    truncated = [p for p in letters if p.letter.original_truncated]
    if not truncated:
        return
    print(
        f"too large to keep whole ({len(truncated)}; first bytes kept, not replayable):", file=out
    )
    for parked in truncated:
        letter = parked.letter
        print(
            f"  {letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
            f"  {letter.reason_code}  {letter.original_size} bytes"
            f"  sha256 {letter.original_sha256}",
            file=out,
        )


def list_dead_letters(
    settings: Settings, selection: Selection, out: TextIO = sys.stdout, timeout: float = 60.0
) -> int:
    """`popsync dlq list`: print what is parked; exit code 0."""
    found = scan(settings, selection, timeout)
    header = f"{found.topic}: {found.total} dead letters"
    if not selection.everything:
        header += f", {len(found.letters)} selected"
    print(header, file=out)
    _print_skipped(found, out)
    summarize(found.letters, out)
    return 0


def _print_skipped(found: Scan, out: TextIO) -> None:
    if found.repeated:
        print(f"({found.repeated} repeats of a parked message were counted once)", file=out)
    if found.undecodable:
        print(f"({found.undecodable} records are not dead letters and were ignored)", file=out)


@dataclass
class ReplayReport:
    selected: int = 0
    replayed: int = 0
    empty: int = 0  # null original value: nothing to replay
    truncated: int = 0  # parked in its small form: the original is not kept
    no_topic: int = 0  # original topic or partition does not exist
    failed: list[str] = field(default_factory=list)


def original_headers(letter: m.DeadLetter) -> Headers:
    """The parked message's own headers (its signature among them)."""
    return [(header.name, header.value) for header in letter.original_headers]


def replay_headers(found: Scan, parked: Parked, now: datetime) -> Headers:
    return [
        (REPLAY_HEADER_PREFIX + "dead-letter-topic", found.topic.encode()),
        (REPLAY_HEADER_PREFIX + "dead-letter-partition", str(parked.partition).encode()),
        (REPLAY_HEADER_PREFIX + "dead-letter-offset", str(parked.offset).encode()),
        (REPLAY_HEADER_PREFIX + "reason", parked.letter.reason_code.encode()),
        (REPLAY_HEADER_PREFIX + "at", _when(now).encode()),
    ]


def replay(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
    timeout: float = 60.0,
    progress: bool = True,
) -> ReplayReport:
    """Re-publish the selected dead letters' original bytes to their original topic/partition."""
    found = scan(settings, selection, timeout)
    report = ReplayReport(selected=len(found.letters))
    print(f"{found.topic}: {found.total} dead letters, {report.selected} selected", file=out)
    _print_skipped(found, out)
    producer = Producer(producer_config(settings.kafka))
    topics = producer.list_topics(timeout=min(timeout, 30)).topics
    sendable: list[Parked] = []
    for parked in found.letters:
        letter = parked.letter
        if letter.original_value is None:
            report.empty += 1
        elif letter.original_truncated:
            report.truncated += 1
        elif letter.original_topic not in topics or letter.original_partition not in (
            topics[letter.original_topic].partitions
        ):
            report.no_topic += 1
        else:
            sendable.append(parked)
    if dry_run:
        print(f"dry run: would replay {len(sendable)}", file=out)
        summarize(sendable, out)
    else:
        _send(producer, found, sendable, report, timeout, progress)
    _print_report(report, dry_run, out)
    return report


def _send(
    producer: Producer,
    found: Scan,
    sendable: list[Parked],
    report: ReplayReport,
    timeout: float,
    progress: bool,
) -> None:
    now = datetime.now(UTC)
    with tqdm(total=len(sendable), desc="replaying", unit="letter", disable=not progress) as bar:

        def delivered(error: KafkaError | None, _: object) -> None:
            if error is None:
                report.replayed += 1
            else:
                report.failed.append(error.name())
            bar.update()

        for parked in sendable:
            letter = parked.letter
            while True:
                try:
                    producer.produce(
                        letter.original_topic,
                        key=letter.original_key,
                        value=letter.original_value,
                        partition=letter.original_partition,
                        headers=original_headers(letter) + replay_headers(found, parked, now),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)  # local queue full: let deliveries drain
            producer.poll(0)
        undelivered = producer.flush(timeout)
    if undelivered:
        report.failed.extend(["UNCONFIRMED"] * undelivered)


def _print_report(report: ReplayReport, dry_run: bool, out: TextIO) -> None:
    if report.empty:
        print(f"skipped {report.empty} with no original value (cannot be replayed)", file=out)
    if report.truncated:
        print(
            f"skipped {report.truncated} too large to have been kept whole (cannot be replayed; "
            "`popsync dlq list` names each by SHA-256)",
            file=out,
        )
    if report.no_topic:
        print(
            f"skipped {report.no_topic} whose original topic or partition does not exist",
            file=out,
        )
    if dry_run:
        return
    print(f"replayed {report.replayed} of {report.selected} selected dead letters", file=out)
    if report.failed:
        reasons = ", ".join(f"{n}={c}" for n, c in Counter(report.failed).most_common(5))
        print(
            f"{len(report.failed)} were not confirmed by the broker ({reasons}); "
            "replaying them again is harmless",
            file=out,
        )
