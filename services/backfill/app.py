"""The backfill's wiring: its resources from settings, the run's phases, its report."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import queue as queue_module
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.postgres.backfill import (
    BackfillStore,
    PartRecord,
    RunRecord,
    StagedRecord,
)
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.matching import PostgresMatchingStore
from popsync.adapters.postgres.pins import PostgresAliasDirectory, PostgresPinAllocator
from popsync.adapters.postgres.publishers import PostgresPublisherDirectory
from popsync.adapters.postgres.sync_state import SyncStateStore
from popsync.ops.failures import EXIT_OK, EXIT_REFUSED
from popsync.runtime.messages import OutboundMessage
from popsync.settings import Settings
from popsync.trust.archives import ArchiveVerifier, verify_archive

from ..synchronizer.step import SynchronizerStep
from ..validator.step import ValidatorStep
from .archives import read_archive
from .job import (
    Applier,
    Archive,
    DeadLetterSink,
    FileSink,
    PartOutcome,
    TopicSink,
    run_id_of,
)

CHUNK = 2_000
_FENCE_WAIT = (
    "backfill: waiting for the stream's merges in flight (synchronizer batches) to finish; "
    "the synchronizer then waits for the backfill"
)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackfillOptions:
    files: tuple[Path, ...]
    dead_letters: Path | None = None
    chunk: int = CHUNK
    restart: bool = False
    jobs: int = 1  # parts applied side by side, each in a process of its own
    progress: bool | None = None  # None: only on a terminal
    report: Path | None = None


def run_backfill(settings: Settings, options: BackfillOptions, out: TextIO = sys.stdout) -> int:
    return asyncio.run(backfill(settings, options, out))


class _LazyProducer:
    """The broker is only needed once something is to be sent to it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: BatchProducer | None = None

    async def send_all(self, messages: Sequence[OutboundMessage]) -> None:
        if self._producer is None:
            self._producer = BatchProducer(self._settings.kafka)
        await self._producer.send_all(messages)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


async def backfill(settings: Settings, options: BackfillOptions, out: TextIO) -> int:
    started = time.monotonic()
    db = Database(settings.postgres, application_name="popsync-backfill")
    try:
        archives = await _verified(db, settings, options.files)
        store = BackfillStore(db)
        run_id = run_id_of(archives)
        await store.lock_run(run_id)
        if options.restart:
            await store.restart_run(run_id)
        run = await store.open_run(run_id, [a.describe() for a in archives])
        if run.finished:
            print(
                f"backfill: these {len(archives)} archive(s) were loaded already (run "
                f"{run_id[:12]}); --restart loads them again (applied events are skipped)",
                file=out,
            )
            return EXIT_OK
        staged_at = time.monotonic()
        resumed = run.staged_records is not None
        if not await store.staging_intact(run):
            run = await _stage(settings, store, run, archives, options)
        applying_at = time.monotonic()
        parts = await store.parts(run_id, options.jobs)
        await store.fence_stream(lambda: print(_FENCE_WAIT, file=sys.stderr))
        try:
            counts = await _apply_parts(settings, run, archives, parts, options)
        finally:
            await store.unfence_stream()
        _gather_dead_letters(options.dead_letters, parts)
        await store.finish_run(run_id)
        _remove_part_files(options.dead_letters, parts)
    finally:
        await db.close()
    finished = time.monotonic()
    report = _report(
        run,
        archives,
        counts,
        options,
        stage=applying_at - staged_at,
        apply=finished - applying_at,
        total=finished - started,
        resumed=resumed,
    )
    _print_summary(report, options, out)
    if options.report is not None:
        options.report.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return EXIT_REFUSED if counts["parked"] else EXIT_OK


async def _verified(db: Database, settings: Settings, files: Sequence[Path]) -> list[Archive]:
    """Each archive with its verified signer, in the order given (`ArchiveRefused` if any
    fails: nothing is staged)."""
    keys = await PostgresPublisherDirectory(db).keys()
    now = datetime.now(UTC)
    grace = timedelta(seconds=settings.trust.expiry_grace_seconds)
    archives = []
    for file_no, path in enumerate(files):
        signer, digest = verify_archive(path, keys, now, grace)
        archives.append(Archive(path, file_no, digest.sha256.hex(), digest.size, signer))
    return archives


# --- the apply pass: parts side by side, each in a process of its own -----------------------


async def _apply_parts(
    settings: Settings,
    run: RunRecord,
    archives: Sequence[Archive],
    parts: Sequence[PartRecord],
    options: BackfillOptions,
) -> Counter[str]:
    """Apply every unfinished part (its share of the citizens), then the last pass over the
    records the parts deferred; the run's counts."""
    counts: Counter[str] = Counter()
    shares = [p for p in parts if not p.last_pass]
    done = sum(p.counts.get("records", 0) for p in shares)
    todo = [p for p in shares if not p.finished]
    with _bar(options.progress, "applying", (run.staged_records or 0) - done) as bar:
        advance = _advancing(bar)
        if len(todo) > 1:
            finished = _in_processes(settings, run, archives, todo, options, advance)
        else:
            finished = [
                await apply_part(settings, run, archives, p, options, advance) for p in todo
            ]
        for last in (p for p in parts if p.last_pass and not p.finished):
            finished.append(await apply_part(settings, run, archives, last, options, advance))
    for part in parts:
        if part.finished:
            counts.update(part.counts)
    for outcome in finished:
        counts.update(outcome.counts)
    # A deferred record is counted by the part that deferred it and by the last pass.
    counts["records"] -= counts.pop("deferred", 0)
    return counts


async def apply_part(
    settings: Settings,
    run: RunRecord,
    archives: Sequence[Archive],
    part: PartRecord,
    options: BackfillOptions,
    advance: Callable[[int, Counter[str]], None],
) -> PartOutcome:
    """One part, on connections of its own: its cumulative counts."""
    db = Database(settings.postgres, application_name=f"popsync-backfill-{part.part}")
    producer = _LazyProducer(settings)
    letters = part_file(options.dead_letters, part)
    sink: DeadLetterSink = FileSink(letters) if letters else TopicSink(producer)
    try:
        store = BackfillStore(db)
        part = await store.lock_part(run.run_id, part.part)
        applier = Applier(
            settings,
            db,
            store,
            _validator(settings, db, archives),
            _synchronizer(settings, db),
            producer,
            sink,
            archives,
            chunk=options.chunk,
        )
        outcome = await applier.apply(run, part, advance)
    finally:
        if isinstance(sink, FileSink):
            sink.close()
        producer.close()
        await db.close()
    log.info(
        "backfill: part %d of %d: %d records in %.1f s",
        part.part,
        part.parts,
        outcome.counts["records"] - part.counts.get("records", 0),
        outcome.seconds,
    )
    return outcome


_progress: Any = None  # a child's queue to the parent's progress bar


def _child_starts(progress: Any) -> None:
    """A part's process: it dies with the backfill that started it (a kill -9 of the
    backfill must not leave a part applying behind the rerun), and reports progress."""
    global _progress
    _progress = progress
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _child_applies(
    settings: Settings,
    run: RunRecord,
    archives: Sequence[Archive],
    part: PartRecord,
    options: BackfillOptions,
) -> PartOutcome:
    def advance(records: int, delta: Counter[str]) -> None:
        _progress.put((records, dict(delta)))

    return asyncio.run(apply_part(settings, run, archives, part, options, advance))


def _in_processes(
    settings: Settings,
    run: RunRecord,
    archives: Sequence[Archive],
    parts: Sequence[PartRecord],
    options: BackfillOptions,
    advance: Callable[[int, Counter[str]], None],
) -> list[PartOutcome]:
    context = multiprocessing.get_context("spawn")  # no inherited event loop or connections
    queue = context.Queue()
    with ProcessPoolExecutor(
        max_workers=len(parts),
        mp_context=context,
        initializer=_child_starts,
        initargs=(queue,),
    ) as pool:
        futures = [
            pool.submit(_child_applies, settings, run, archives, part, options) for part in parts
        ]
        while not all(f.done() for f in futures):
            with contextlib.suppress(queue_module.Empty):
                records, delta = queue.get(timeout=0.5)
                advance(records, Counter(delta))
        outcomes = [f.result() for f in futures]  # a part's failure is raised here
    for part, outcome in zip(parts, outcomes, strict=True):
        log.info("backfill: part %d: %.1f s", part.part, outcome.seconds)
    return outcomes


# --- dead-letter files: one per part while applying, gathered into one at the end ---------


def part_file(path: Path | None, part: PartRecord) -> Path | None:
    return None if path is None else path.with_name(f"{path.name}.part-{part.part}")


def _gather_dead_letters(path: Path | None, parts: Sequence[PartRecord]) -> None:
    """The dead-letter file: the parts' files, in order (each exact: cut at its commit)."""
    if path is None:
        return
    with path.open("wb") as whole:
        for part in parts:
            piece = part_file(path, part)
            if piece is not None and piece.exists():
                with piece.open("rb") as handle:
                    shutil.copyfileobj(handle, whole)
        whole.flush()
        os.fsync(whole.fileno())


def _remove_part_files(path: Path | None, parts: Sequence[PartRecord]) -> None:
    for part in parts:
        piece = part_file(path, part)
        if piece is not None:
            piece.unlink(missing_ok=True)


def _validator(settings: Settings, db: Database, archives: Sequence[Archive]) -> ValidatorStep:
    """The validator's step, each record's publisher being its archive's signer."""
    return ValidatorStep(
        settings,
        PostgresPinAllocator(db),
        PostgresAliasDirectory(db),
        PostgresMatchingStore(db),
        verifier=ArchiveVerifier({a.topic: a.signer for a in archives}),
    )


def _synchronizer(settings: Settings, db: Database) -> SynchronizerStep:
    """The synchronizer's merge, without the live stream's daily cap."""
    states = SyncStateStore(db, fenced=False)  # the backfill holds the fence itself
    return SynchronizerStep(settings.topics, settings.processing, states, capped=False)


async def _stage(
    settings: Settings,
    store: BackfillStore,
    run: RunRecord,
    archives: Sequence[Archive],
    options: BackfillOptions,
) -> RunRecord:
    """Stage every archive (a transaction each), then index the staging in apply order."""
    await store.begin_staging(run.run_id)
    with _bar(options.progress, "staging", None) as bar:
        for archive in archives:
            kind, digest = archive.signer.publisher.kind, bytes.fromhex(archive.sha256)
            records = read_archive(archive.path, kind, digest)
            await store.stage(run.run_id, archive.file_no, _counted(records, bar))
    return await store.finish_staging(run.run_id)


def _counted(records: Iterable[StagedRecord], bar: tqdm[Any]) -> Iterator[StagedRecord]:
    """The records, counted on the bar as they are read (a thousand at a time)."""
    count = 0
    for record in records:
        count += 1
        if count % 1000 == 0:
            bar.update(1000)
        yield record
    bar.update(count % 1000)


def _bar(progress: bool | None, what: str, total: int | None) -> tqdm[Any]:
    return tqdm(
        total=total,
        desc=what,
        unit=" records",
        unit_scale=True,
        disable=None if progress is None else not progress,  # None: only on a terminal
        file=sys.stderr,
        smoothing=0.1,
    )


def _advancing(bar: tqdm[Any]) -> Callable[[int, Counter[str]], None]:
    """What moves the apply bar: records done, with what was applied and parked so far."""
    seen: Counter[str] = Counter()

    def advance(records: int, delta: Counter[str]) -> None:
        seen.update(delta)
        bar.set_postfix(applied=f"{seen['applied']:,}", parked=f"{seen['parked']:,}", refresh=False)
        bar.update(records)

    return advance


def _report(
    run: RunRecord,
    archives: Sequence[Archive],
    counts: Counter[str],
    options: BackfillOptions,
    *,
    stage: float,
    apply: float,
    total: float,
    resumed: bool,
) -> dict[str, Any]:
    records = counts["records"]
    return {
        "run_id": run.run_id,
        "archives": [a.describe() for a in archives],
        "records": records,
        "staged": run.staged_records,
        "applied": counts["applied"],
        "duplicates": counts["duplicates"],
        "conflicts": counts["conflicts"],
        "parked": counts["parked"],
        "notices": counts["notices"],
        "citizens": run.citizens,
        "parked_by_reason": {
            k.removeprefix("reason:"): v
            for k, v in sorted(counts.items())
            if k.startswith("reason:")
        },
        "dead_letters": str(options.dead_letters) if options.dead_letters else "topic",
        "resumed": resumed,
        "seconds": round(total, 2),
        "phases": {"stage": round(stage, 2), "apply": round(apply, 2)},
        "records_per_second": round(records / apply, 1) if apply > 0 else None,
    }


def _print_summary(report: dict[str, Any], options: BackfillOptions, out: TextIO) -> None:
    where = f"to {options.dead_letters}" if options.dead_letters else "on the dead-letter topic"
    print(
        f"backfill: {len(report['archives'])} archive(s), {report['records']:,} records: "
        f"{report['applied']:,} applied, {report['duplicates']:,} duplicates, "
        f"{report['conflicts']:,} conflicts, {report['parked']:,} parked {where}; "
        f"{report['citizens'] or 0:,} citizens; {report['seconds']:.1f} s "
        f"(staging {report['phases']['stage']:.1f} s, applying {report['phases']['apply']:.1f} s)",
        file=out,
    )
    for reason, count in report["parked_by_reason"].items():
        print(f"  parked  {reason:<28} {count:>10,}", file=out)
