"""`popsync demo`: the whole pipeline on embedded services, end to end.

Starts a Kafka-protocol broker and PostgreSQL, creates the topics and schema,
runs one process per worker, publishes a simulated stream from many registries
and provinces, waits until the store has converged, checks the store against a
reference fold of the same stream, and prints a summary. With `--with-prometheus` it
also runs a real Prometheus (the `prometheus` binary on PATH) scraping every worker's
`/metrics`, prints its URL, and checks a PromQL count against the published stream.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import psycopg
from pydantic import SecretStr
from tqdm import tqdm

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.kafka.reader import read_to_end
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.dev.embedded.prometheus import JOB as PROMETHEUS_JOB
from popsync.dev.embedded.prometheus import EmbeddedPrometheus, PrometheusStartError
from popsync.dev.publishers import DevDirectory, dev_signers
from popsync.dev.simulate.generator import SimulatedMessage, simulate
from popsync.dev.stack import (
    EmbeddedStack,
    ServiceProcess,
    disk_usage,
    human_size,
    remove_tree,
)
from popsync.domain.merge import fold
from popsync.domain.rules import RuleViolation, check_event
from popsync.ops.publish import Publisher
from popsync.runtime.deadletter import DEAD_LETTER_CODEC
from popsync.runtime.messages import InboundMessage
from popsync.settings import WORKER_NAMES, Settings
from popsync.trust.verification import TrustViolation, Verifier

EVENT_CODEC = Codec(m.RegistryEvent)


@dataclass
class Expectation:
    """What the store must hold once the pipeline has processed the stream."""

    published: int = 0
    invalid: int = 0
    history_rows: int = 0
    duplicates: int = 0
    conflicts: int = 0
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)  # of the invalid events


def expect(messages: Sequence[SimulatedMessage], now: datetime, skew: timedelta) -> Expectation:
    """The reference result: the validator's signature check and rules, and the merge fold,
    run in-process on the stream as its registries sign it."""
    result = Expectation(published=len(messages))
    per_citizen: dict[str, dict[str, m.RegistryEvent]] = {}
    signers = dev_signers()
    verifier = Verifier(DevDirectory(), refresh_seconds=3600)
    asyncio.run(verifier.refresh())
    for message in messages:
        value = EVENT_CODEC.encode(message.event)
        headers = tuple(signers.headers(message.key, value, message.event))
        signed = InboundMessage("reference", 0, 0, message.key, value, headers)
        try:
            verifier.verify(signed, message.event, now)
            event = check_event(message.event, message.key, now, skew)
        except (TrustViolation, RuleViolation) as violation:
            result.invalid += 1
            result.reasons[violation.reason] += 1
            continue
        events = per_citizen.setdefault(event.subject_pin or "", {})
        if event.event_id in events:
            result.duplicates += 1
        events[event.event_id] = event
    for pin, events in per_citizen.items():
        snapshot, conflicts = fold(pin, events.values())
        result.history_rows += len(events)
        result.conflicts += len(conflicts)
        result.snapshots[pin] = snapshot.model_dump(mode="json")
    return result


def count_dead_letters(settings: Settings, expected: int, timeout: float) -> Counter[str]:
    """Dead letters by reason, read from the topic itself (to its end, as fetched)."""
    deadline = time.monotonic() + timeout
    while True:
        reasons: Counter[str] = Counter()
        for _, _, value in read_to_end(settings.kafka, settings.topics.dead_letters, timeout):
            reasons[DEAD_LETTER_CODEC.decode(value).reason_code] += 1
        if sum(reasons.values()) >= expected or time.monotonic() > deadline:
            return reasons
        time.sleep(0.5)


@dataclass(frozen=True)
class StoreCounts:
    history: int = 0
    citizens: int = 0
    open_conflicts: int = 0
    resolved_conflicts: int = 0


def store_counts(dsn: str) -> StoreCounts:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM citizen_history), (SELECT count(*) FROM citizens),"
            " (SELECT count(*) FILTER (WHERE resolved_at IS NULL) FROM citizen_conflicts),"
            " (SELECT count(*) FILTER (WHERE resolved_at IS NOT NULL) FROM citizen_conflicts)"
        ).fetchone()
    return StoreCounts(*(int(v) for v in row)) if row else StoreCounts()


def store_matches(dsn: str, snapshots: dict[str, dict[str, Any]]) -> int:
    """How many citizens' stored snapshots equal the reference fold."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT pin, snapshot FROM citizens").fetchall()
    stored: dict[str, Any] = {pin: snapshot for pin, snapshot in rows}
    return sum(1 for pin, snapshot in snapshots.items() if stored.get(pin) == snapshot)


def _raise_interrupt(_: int, __: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(
    citizens: int,
    seed: int,
    workdir: Path | None,
    timeout: float,
    with_prometheus: bool = False,
    metrics_plot: Path | None = None,
    keep: bool = False,
    serve_port: int | None = None,
) -> int:
    """Run the demo; its temp work directory goes at the end unless `keep`, the run
    failed (its logs say why), or the person named it with `workdir` (theirs to keep)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop cleanly on SIGTERM as on Ctrl-C
    root = workdir or Path(tempfile.mkdtemp(prefix="popsync-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"popsync demo: {citizens} citizens, seed {seed}; logs and data in {root}")
    stack = EmbeddedStack(root)
    prometheus = EmbeddedPrometheus(root / "prometheus") if with_prometheus else None
    code = 1
    try:
        code = _run(stack, citizens, seed, timeout, prometheus, metrics_plot)
        if code == 0 and serve_port is not None:
            code = serve_until_stopped(stack, stack.settings_for("popsync"), serve_port)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers, broker and database", file=sys.stderr)
        code = 130
    finally:
        # Ignore a second Ctrl-C: stopping halfway would leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if prometheus is not None:
                prometheus.stop()
            stack.stop()  # every server has exited before its files are removed
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _clean_up(root, remove=workdir is None and not keep and code != 1)
    return code


def _clean_up(root: Path, *, remove: bool) -> None:
    """Say where the data is, or remove it and say how much that freed."""
    size = human_size(disk_usage(root))
    if not remove:
        print(f"  {'data and logs kept':<24}{root} ({size})")
        return
    problem = remove_tree(root)
    if problem is None:
        print(f"  {'data and logs removed':<24}{root} ({size}; --keep keeps them)")
    else:
        print(f"popsync demo: {problem}", file=sys.stderr)


def _run(
    stack: EmbeddedStack,
    citizens: int,
    seed: int,
    timeout: float,
    prometheus: EmbeddedPrometheus | None = None,
    metrics_plot: Path | None = None,
) -> int:
    stack.start()
    settings = stack.settings_for("popsync")
    stack.prepare(settings)
    for name in WORKER_NAMES:
        stack.start_worker(name, settings)
    if prometheus is not None:
        prometheus.set_targets((worker.name, worker.target) for worker in stack.workers)
        try:
            prometheus.start()
        except PrometheusStartError as exc:
            print(f"popsync demo: {exc}", file=sys.stderr)
            return 1
        print(f"Prometheus: {prometheus.url} (job {PROMETHEUS_JOB}, scraping every worker)")

    now = datetime.now(UTC)
    messages = simulate(citizens, seed=seed, now=now)
    skew = timedelta(seconds=settings.processing.future_skew_seconds)
    expected = expect(messages, now, skew)

    started, started_at = time.monotonic(), time.time()
    # Every registry of the simulation signs with its development key, as a real one would.
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, dev_signers()
    )
    publisher.publish((message.key, message.event) for message in messages)
    dsn = settings.postgres.dsn.get_secret_value()

    converged = False
    with tqdm(total=expected.history_rows, unit="ev", desc="store", leave=True) as bar:
        while time.monotonic() - started < timeout:
            counts = store_counts(dsn)
            bar.update(counts.history - bar.n)
            if counts.history >= expected.history_rows:
                converged = True
                break
            dead = [w.name for w in stack.workers if not w.alive]
            if dead:
                print(f"worker(s) exited: {dead}; see {stack.workdir / 'logs'}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    dead_letters = count_dead_letters(settings, expected.invalid, timeout=30)
    counts = store_counts(dsn)
    matching = store_matches(dsn, expected.snapshots)

    _print_summary(expected, dead_letters, counts, matching, elapsed)
    scraped = prometheus is None or _check_prometheus(prometheus, expected.published)
    if prometheus is not None and metrics_plot is not None:
        _plot(prometheus, started_at, metrics_plot, f"{expected.published:,} events, seed {seed}")
    ok = scraped and (
        converged
        and counts.history == expected.history_rows
        and counts.open_conflicts == expected.conflicts
        and sum(dead_letters.values()) == expected.invalid
        and matching == len(expected.snapshots)
    )
    if not ok:
        print("demo did NOT converge to the expected state", file=sys.stderr)
    return 0 if ok else 1


DEMO_PARTNER_COMMAND = (
    "popsync partners add bank-demo --operator demo --purpose KYC "
    "--lookup-field full_name,birth_date,life_status"
)


def demo_citizen(dsn: str) -> tuple[str, str, str] | None:
    """PIN, name and birth date of one living demo citizen (the first by PIN)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pin, full_name, birth_date::text FROM citizens WHERE life_status = 'ALIVE'"
            " AND full_name IS NOT NULL AND birth_date IS NOT NULL ORDER BY pin LIMIT 1"
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def serve_until_stopped(stack: EmbeddedStack, settings: Settings, port: int) -> int:
    """`--serve`: the verification service on the demo's store until Ctrl-C, with the
    commands a person needs to call it."""
    audit_key = secrets.token_urlsafe(32)
    # A new partner is in force within a second, not the default five.
    serve = settings.serve.model_copy(
        update={"audit_key": SecretStr(audit_key), "partner_refresh_seconds": 1.0}
    )
    service = ServiceProcess(
        settings.model_copy(update={"serve": serve}), stack.workdir / "logs" / "serve.log", port
    )
    try:
        service.wait_ready()
    except RuntimeError as exc:
        print(f"popsync demo: {exc}", file=sys.stderr)
        service.stop()
        return 1
    dsn = settings.postgres.dsn.get_secret_value()
    citizen = demo_citizen(dsn)
    body = (
        json.dumps(
            {"pin": citizen[0], "full_name": citizen[1], "birth_date": citizen[2]},
            ensure_ascii=False,
        )
        if citizen
        else '{"pin": "…", "full_name": "…"}'
    )
    print(f"\nverification service: {service.base_url} (Ctrl-C stops it and the demo)")
    print("In another shell:")
    print(f"  export POPSYNC_POSTGRES__DSN={shlex.quote(dsn)}")
    print(f"  export POPSYNC_SERVE__AUDIT_KEY={shlex.quote(audit_key)}")
    print(f"  KEY=$({DEMO_PARTNER_COMMAND} | sed -n 's/^api key: //p')")
    print(
        f'  curl -s {service.base_url}/v1/verify -H "Authorization: Bearer $KEY" '
        f"-H 'X-Purpose: KYC' -d {shlex.quote(body)}"
    )
    print(f"  popsync audit citizen {citizen[0] if citizen else 'PIN'}", flush=True)
    try:
        while service.alive:
            time.sleep(0.5)
        print(f"popsync demo: the service exited; see {service.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npopsync demo: stopping the service", flush=True)
        return 0
    finally:
        service.stop()


PROMQL_CONSUMED = f'sum(popsync_events_consumed_total{{job="{PROMETHEUS_JOB}",worker="validator"}})'


def _plot(prometheus: EmbeddedPrometheus, started_at: float, path: Path, subtitle: str) -> None:
    from popsync.dev import metrics_plot

    panels = metrics_plot.collect(prometheus, started_at - 5, time.time())
    metrics_plot.draw(panels, path, subtitle)
    print(f"  {'metrics plot':<24}{path}")


def _check_prometheus(prometheus: EmbeddedPrometheus, published: int, timeout: float = 30) -> bool:
    """Ask Prometheus what the validator consumed: every published event, once scraped."""
    deadline = time.monotonic() + timeout
    value = prometheus.value(PROMQL_CONSUMED)
    while value != published and time.monotonic() < deadline:
        time.sleep(1)
        value = prometheus.value(PROMQL_CONSUMED)
    shown = "no result" if value is None else f"{value:,.0f}"
    verdict = "OK" if value == published else "MISMATCH"
    print(f"  {'PromQL check':<24}{PROMQL_CONSUMED} = {shown} (published {published:,}): {verdict}")
    print(f"  {'Prometheus':<24}{prometheus.url}/graph?g0.expr={quote(PROMQL_CONSUMED)}")
    return value == published


def _print_summary(
    expected: Expectation,
    dead_letters: Counter[str],
    counts: StoreCounts,
    matching: int,
    elapsed: float,
) -> None:
    reasons = ", ".join(f"{r} {n}" for r, n in dead_letters.most_common(4))
    if len(dead_letters) > 4:
        reasons += f", {len(dead_letters) - 4} more reasons"
    rows = [
        ("events published", f"{expected.published:,}"),
        ("dead-lettered", f"{sum(dead_letters.values()):,}  ({reasons})"),
        ("applied (history rows)", f"{counts.history:,}"),
        ("duplicates ignored", f"{expected.duplicates:,}"),
        ("conflicts open", f"{counts.open_conflicts:,} (expected {expected.conflicts:,})"),
        ("conflicts resolved", f"{counts.resolved_conflicts:,} (by events that arrived late)"),
        ("citizens in store", f"{counts.citizens:,}"),
        ("store = reference fold", f"{matching:,} of {len(expected.snapshots):,} citizens"),
        ("elapsed", f"{elapsed:.1f} s (publish to converged)"),
        ("throughput", f"{expected.published / elapsed:,.0f} events/s"),
    ]
    print("\npopsync demo summary")
    for label, value in rows:
        print(f"  {label:<24}{value}")
