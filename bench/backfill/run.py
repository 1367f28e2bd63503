"""One run of the backfill benchmark: the archives, the floor, then the backfill.

On one embedded stack (broker and PostgreSQL, fsync on, as in production):

1. the archives (`archive.py`): N events, one signed container file per registry, made
   once and kept in the cache directory;
2. the floor (`floor.py`) reads them and COPYs the decoded rows into a database of its
   own; its table is then dropped and PostgreSQL checkpointed, so the backfill does not pay
   for writing the floor's pages out;
3. the backfill: `popsync backfill FILE… --report R --dead-letters D --no-progress` as a
   process of its own on a pipeline of its own (database with the schema, topics, the
   development publishers), timed from its start to its exit. The harness waits for it
   with wait4(2), which gives its peak resident set and its CPU time (its children's
   included, once it has waited for them); meanwhile, every `POLL_SECONDS`, it adds up the
   resident sets of the process and its descendants. PostgreSQL's and the broker's CPU
   time are read before and after it (proc(5)).

Then the store's own counts (history rows, citizens) are set beside what the rules accept
in the archive (`archive.Archive.expected`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.backfill import archive as arc
from bench.backfill import floor
from bench.pipeline.pipeline import BenchFailed, process_cpu_seconds, tree_cpu_seconds
from bench.verify.cpu import descendants, machine_busy_seconds
from popsync.dev.stack import EmbeddedStack, embedded_stack, settings_env

ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.5
TEN_MILLION = 10_000_000
GOAL_SHARE_OF_FLOOR = 0.5
GOAL_SECONDS_FOR_TEN_MILLION = 600.0
GOAL_RSS_MB = 1024.0
FLOOR_DATABASE = "bench-floor"
BACKFILL_PIPELINE = "bench-backfill"  # its database, topics and groups
# popsync backfill: 0 every record went in, 1 some were parked (a result, not a failure).
BACKFILL_DONE = (0, 1)


@dataclass(frozen=True)
class Options:
    events: int
    seed: int
    base_events: int
    cache_dir: Path
    workdir: Path | None
    timeout: float  # the backfill's, seconds
    command: str = ""


def run(options: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    source = source_revision()
    archive, base = arc.load_or_generate(
        options.events, options.seed, options.cache_dir, options.base_events, say
    )
    size = sum(path.stat().st_size for path in archive.files)
    say(
        f"archive: {archive.events:,} events in {len(archive.files)} files "
        f"({size / 2**20:,.0f} MB), {archive.copies} copies of a {archive.base_events:,}-event "
        f"block"
    )
    expected = archive.expected(arc.base_flags(base, datetime.now(UTC), options.cache_dir))
    root = options.workdir or Path(tempfile.mkdtemp(prefix="popsync-backfill-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    with embedded_stack(root) as stack:
        floor_result = _floor(stack, archive)
        floor_rate = floor_result["events_per_second"]
        say(f"floor: {floor_rate:,.0f} events/s")
        backfill = _backfill(stack, archive, root, options.timeout, say)
        say(
            f"backfill: {backfill['events_per_second']:,.0f} events/s, "
            f"{backfill['wall_seconds']:,.1f} s, peak RSS {backfill['peak_rss_mb']:,.0f} MB"
        )
    result = summary(options, archive, size, base, expected, floor_result, backfill)
    result["source"] = source
    result["machine"] = machine(load_before)
    result["harness_seconds"] = round(time.monotonic() - started, 1)
    return result


# --------------------------------------------------------------------------- the floor


def _postmaster(stack: EmbeddedStack) -> int:
    pid = stack.postgres.pid
    if pid is None:
        raise BenchFailed("PostgreSQL is not running")
    return pid


def _postgres_cpu(stack: EmbeddedStack) -> float:
    return tree_cpu_seconds(_postmaster(stack), stack.postgres.backend_processes)


def _broker_cpu(stack: EmbeddedStack) -> float:
    pid = stack.broker.pid
    if pid is None:
        raise BenchFailed("the broker is not running")
    return process_cpu_seconds(pid)


def _drop_database(stack: EmbeddedStack, name: str) -> None:
    """Drop database `name` if a run before this one (same --workdir) left it."""
    with psycopg.connect(stack.postgres.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _floor(stack: EmbeddedStack, archive: arc.Archive) -> dict[str, Any]:
    _drop_database(stack, FLOOR_DATABASE)
    dsn = stack.settings_for(FLOOR_DATABASE).postgres.dsn.get_secret_value()
    postgres_before, busy_before = _postgres_cpu(stack), machine_busy_seconds()
    measured = floor.run(dsn, archive.files, floor.batch_size(archive.events))
    postgres = _postgres_cpu(stack) - postgres_before
    busy = machine_busy_seconds() - busy_before
    floor.drop(dsn)
    if measured["events"] != archive.events:
        raise BenchFailed(f"the floor read {measured['events']:,} of {archive.events:,} events")
    return {
        **measured,
        "cpu_us_per_event": round(measured["cpu_seconds"] / archive.events * 1e6, 1),
        "postgres_cpu_seconds": round(postgres, 2),
        "postgres_cpu_us_per_event": round(postgres / archive.events * 1e6, 1),
        "cores_busy_otherwise": _otherwise(
            busy, measured["cpu_seconds"] + postgres, measured["wall_seconds"]
        ),
    }


def _otherwise(busy: float, ours: float, seconds: float) -> float:
    """Cores the machine spent on other work over a phase: its busy time, less the CPU of
    the phase's own processes, per second (0.0 on an otherwise idle machine, give or take
    a tick's rounding)."""
    return round(max(busy - ours, 0.0) / max(seconds, 1e-3), 2)


# --------------------------------------------------------------------------- the backfill


def _backfill(
    stack: EmbeddedStack,
    archive: arc.Archive,
    root: Path,
    timeout: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    _drop_database(stack, BACKFILL_PIPELINE)
    settings = stack.isolated_settings(BACKFILL_PIPELINE)
    stack.prepare(settings)  # topics, schema, the development publishers and their keys
    report_path = root / "backfill-report.json"
    dead_letters = root / "backfill-dead-letters.jsonl"
    for stale in (report_path, dead_letters):
        stale.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "popsync", "backfill", *map(str, archive.files)]
    argv += ["--dead-letters", str(dead_letters), "--report", str(report_path)]
    argv += ["--no-progress"]
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(ROOT),  # this checkout's popsync, whatever is installed
        "PYTHONUNBUFFERED": "1",
    }
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"backfill: {' '.join(argv[1:4])} … (log: {logs / 'backfill.log'})")
    postgres_before, broker_before = _postgres_cpu(stack), _broker_cpu(stack)
    busy_before = machine_busy_seconds()
    peak_tree_kb = samples = 0
    with (logs / "backfill.log").open("ab") as log:
        began = time.monotonic()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                peak_tree_kb = max(peak_tree_kb, _tree_rss_kb(process.pid))
                samples += 1
                if time.monotonic() - began > timeout:
                    raise BenchFailed(f"the backfill did not finish in {timeout:g} s")
                time.sleep(POLL_SECONDS)
        except BaseException:
            process.kill()
            os.wait4(process.pid, 0)
            process.returncode = -9
            raise
        wall = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    busy = machine_busy_seconds() - busy_before
    postgres = _postgres_cpu(stack) - postgres_before
    broker = _broker_cpu(stack) - broker_before
    if process.returncode not in BACKFILL_DONE:
        raise BenchFailed(
            f"popsync backfill exited {process.returncode}; see {logs / 'backfill.log'}"
        )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    cpu = usage.ru_utime + usage.ru_stime
    events = archive.events
    return {
        "argv": ["popsync", *argv[3:]],
        "exit_code": process.returncode,
        "wall_seconds": round(wall, 2),
        "events_per_second": round(events / wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # wait4: the largest process's
        "peak_tree_rss_mb_sampled": round(peak_tree_kb / 1024, 1),
        "rss_samples": samples,
        "cpu_seconds": round(cpu, 2),
        "cpu_us_per_event": round(cpu / events * 1e6, 1),
        "postgres_cpu_seconds": round(postgres, 2),
        "postgres_cpu_us_per_event": round(postgres / events * 1e6, 1),
        "broker_cpu_seconds": round(broker, 2),
        "broker_cpu_us_per_event": round(broker / events * 1e6, 1),
        # Other work on the machine over the run: figures taken beside it are not clean.
        "cores_busy_otherwise": _otherwise(busy, cpu + postgres + broker, wall),
        "dead_letters": _lines(dead_letters),
        "store": _store_counts(settings.postgres.dsn.get_secret_value()),
        "report": report,
    }


def _tree_rss_kb(pid: int) -> int:
    """The resident sets of `pid` and its descendants, added up, kB (0 for one gone)."""
    total = 0
    for member in (pid, *descendants(pid)):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total


def _lines(path: Path) -> int | None:
    if not path.exists():
        return None
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def _store_counts(dsn: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        for table in ("citizens", "citizen_history", "citizen_conflicts"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            counts[table] = int(row[0]) if row else 0
    return counts


# --------------------------------------------------------------------------- the result


def summary(
    options: Options,
    archive: arc.Archive,
    size: int,
    base: arc.Base,
    expected: dict[str, int],
    floor_result: dict[str, Any],
    backfill: dict[str, Any],
) -> dict[str, Any]:
    events = archive.events
    floor_rate = floor_result["events_per_second"]
    rate = backfill["events_per_second"]
    measured_ten_million = events >= TEN_MILLION
    ten_million_seconds = (
        backfill["wall_seconds"] * TEN_MILLION / events if measured_ten_million else None
    )
    extrapolated = None if measured_ten_million else round(TEN_MILLION / rate, 1)
    time_for_ten_million = ten_million_seconds or extrapolated or 0.0
    rss = max(backfill["peak_rss_mb"], backfill["peak_tree_rss_mb_sampled"])
    return {
        "command": options.command,
        "measured_on": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": events,
        "archive": {
            "files": [path.name for path in archive.files],
            "bytes": size,
            "by_registry": archive.by_registry,
            "seed": archive.seed,
            "base_events": archive.base_events,
            "base_citizens": base.citizens,
            "copies": archive.copies,
            "distinct_pins": archive.distinct_pins,
            "generated_seconds": archive.generated_seconds,  # None: taken from the cache
        },
        # What the validator's rules accept in the archive today (an archive has no message
        # key: each record is keyed by its subject PIN).
        "expected": expected,
        # Whether the store and the backfill's report hold what the rules accept: a figure
        # of a backfill that lost or doubled rows would say nothing.
        "agreement": agreement(events, expected, backfill),
        "events_per_second": {"floor": floor_rate, "backfill": rate},
        "ratio_backfill_to_floor": round(rate / floor_rate, 4),
        "backfill_seconds": backfill["wall_seconds"],
        "ten_million_events_seconds": round(ten_million_seconds, 1)
        if ten_million_seconds is not None
        else None,
        "ten_million_events_seconds_extrapolated": extrapolated,
        "ten_million_basis": f"measured on {events:,} events"
        if measured_ten_million
        else f"EXTRAPOLATED from {events:,} events at the measured rate, not measured",
        "peak_rss_mb": rss,
        "cpu_us_per_event": {
            "backfill": backfill["cpu_us_per_event"],
            "postgres": backfill["postgres_cpu_us_per_event"],
            "broker": backfill["broker_cpu_us_per_event"],
            "floor": floor_result["cpu_us_per_event"],
            "postgres_during_floor": floor_result["postgres_cpu_us_per_event"],
        },
        "goals": {
            "backfill_at_least_half_of_floor": rate >= GOAL_SHARE_OF_FLOOR * floor_rate,
            "ten_million_under_10_min": time_for_ten_million < GOAL_SECONDS_FOR_TEN_MILLION,
            "rss_below_1gb": rss < GOAL_RSS_MB,
        },
        "cores_busy_otherwise": {
            "floor": floor_result["cores_busy_otherwise"],
            "backfill": backfill["cores_busy_otherwise"],
        },
        "goals_basis": {
            "ten_million_under_10_min": "measured" if measured_ten_million else "extrapolated",
            "rss_below_1gb": f"peak over {events:,} events",
        },
        "floor": floor_result,
        "backfill": backfill,
    }


def agreement(events: int, expected: dict[str, int], backfill: dict[str, Any]) -> dict[str, bool]:
    report, store = backfill["report"], backfill["store"]
    return {
        "records_read": report.get("records") == events,
        "history_rows": store["citizen_history"] == expected["history_rows"],
        "citizens": store["citizens"] == expected["citizens"],
        "parked_are_the_invalid": report.get("parked") == events - expected["valid"],
    }


def source_revision() -> dict[str, Any]:
    """The commit the backfill runs from, and the files of popsync and the services that
    differ from it (None where git cannot say); read before the backfill starts."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(  # noqa: S603 - fixed arguments
                ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout

    changed = git("status", "--porcelain", "--", "popsync", "services")
    commit = git("rev-parse", "HEAD")
    return {
        "commit": None if commit is None else commit.strip(),
        "modified": None if changed is None else [line[3:] for line in changed.splitlines()],
    }


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in ("fastavro", "psycopg", "pydantic")},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "harness_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
