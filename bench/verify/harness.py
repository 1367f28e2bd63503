"""One run of the verification benchmark: the store, the floor, the baseline, the service.

In order, on one embedded PostgreSQL (fsync on, as in production) holding the seeded
citizens, each contender asked the same questions (`dataset.questions`):

1. the floor (`floor.py`): PK reads, then `= ANY` reads of 1,000, no HTTP;
2. the baseline (`baseline.py`), once per `--workers` value;
3. the service (`popsync serve`), with a partner made by `popsync partners add`.

Each HTTP contender is first checked to give the answers `compare` gives (the first
questions, one by one and as a batch), then loaded at each concurrency of single
verifications and each of batches (`load.py`, a process of its own), for a warm-up then a
measured window. Over each window the harness reads, from /proc, the CPU time of the
server's process tree and of PostgreSQL's, and from `pg_stat_database` the transactions and
rows (counters PostgreSQL publishes about once a second: approximate).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.verify import BATCH_ITEMS, sampling
from bench.verify import costs as cost_model
from bench.verify.cpu import (
    descendants,
    machine_busy_seconds,
    process_cpu_seconds,
    tree_cpu_seconds,
)
from bench.verify.dataset import Mix, questions, seed_store, write_questions
from bench.verify.servers import (
    Server,
    ServerFailed,
    add_partner,
    service_env,
    service_missing,
    start_baseline,
    start_service,
)
from popsync.dev.embedded.postgres import EmbeddedPostgres
from popsync.verification.comparison import RECORD_COLUMNS, CitizenRecord, compare
from popsync.verification.models import VerifyRequest

GOAL_SHARE_OF_BASELINE = 0.9
GOAL_SINGLES_PER_SECOND = 3000
GOAL_SINGLES_P99_MS = 50.0
GOAL_BATCH_SHARE_OF_FLOOR = 0.5
_CHECKED_QUESTIONS = 100
_STARTED_TIMEOUT = 30.0


@dataclass(frozen=True)
class Options:
    citizens: int
    seed: int
    questions: int
    duration: float
    warmup: float
    concurrency: tuple[int, ...]  # connections sending single verifications
    batch_concurrency: tuple[int, ...]  # connections sending batches of BATCH_ITEMS
    workers: tuple[int, ...]  # uvicorn workers of the baseline, one run each
    floor_connections: int
    floor_batch_connections: int
    service: bool = True
    profile: bool = True  # sample each server with py-spy (if installed) after its points
    service_env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    command: str = ""


def run(options: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    root = options.workdir or Path(tempfile.mkdtemp(prefix="popsync-verify-"))
    root.mkdir(parents=True, exist_ok=True)
    finished = False
    try:
        result = _run(options, root, say)
        finished = True
        return result
    finally:
        if options.workdir is None:
            if finished:
                shutil.rmtree(root, ignore_errors=True)
            else:
                say(f"kept {root} (logs in {root / 'logs'})")


def _run(options: Options, root: Path, say: Callable[[str], None]) -> dict[str, Any]:
    logs = root / "logs"
    started = time.monotonic()
    load_before = os.getloadavg()
    with EmbeddedPostgres(root / "pgdata") as postgres:
        postgres.create_database("verify")
        dsn = postgres.dsn("verify")
        say(f"seeding {options.citizens:,} citizens (or finding them in {root})")
        seeded = seed_store(dsn, options.citizens, options.seed, root)
        asked = questions(dsn, options.questions, options.seed)
        question_file = root / "questions.jsonl"
        write_questions(question_file, asked)
        _prewarm(dsn, asked)
        postmaster = postgres.pid
        assert postmaster is not None
        bench = _Bench(options, dsn, question_file, postmaster, logs, say)
        with psycopg.connect(dsn, autocommit=True) as monitor:
            bench.monitor = monitor
            floor = bench.floor()
            contenders: dict[str, Any] = {}
            for workers in options.workers:
                contenders[f"baseline_x{workers}"] = bench.contender(
                    start_baseline(dsn, workers, logs), asked
                )
            if options.service:
                contenders["service"] = bench.service(asked)
    result: dict[str, Any] = {
        "citizens": options.citizens,
        "seed": options.seed,
        "store": {"seeding_seconds": seeded.seconds, "cached": seeded.cached},
        "questions": {"count": len(asked), "mix": vars(Mix())},
        "warmup_seconds": options.warmup,
        "duration_seconds": options.duration,
        "batch_items": BATCH_ITEMS,
        "floor": floor,
        "contenders": contenders,
    }
    result["costs_us"] = cost_model.measure(asked[:2000])
    result["goals"] = goals(result)
    result["cpu_split"] = cost_model.split(result)
    result["profile_service_over_baseline"] = sampling.difference(
        contenders.get("service", {}).get("profile"),
        next((c.get("profile") for n, c in contenders.items() if n.startswith("baseline")), None),
    )
    result["machine"] = machine(load_before)
    result["command"] = options.command
    result["measured_on"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["total_seconds"] = round(time.monotonic() - started, 1)
    return result


def _prewarm(dsn: str, asked: list[dict[str, str]]) -> None:
    """Read every asked PIN once, so each contender finds the same pages in memory."""
    pins = [q["pin"] for q in asked]
    with psycopg.connect(dsn) as conn:
        for first in range(0, len(pins), 5000):
            conn.execute(
                "SELECT count(*) FROM citizens WHERE pin = ANY(%s)", (pins[first : first + 5000],)
            )


class _Bench:
    def __init__(
        self,
        options: Options,
        dsn: str,
        question_file: Path,
        postmaster: int,
        logs: Path,
        say: Callable[[str], None],
    ) -> None:
        self.options = options
        self.dsn = dsn
        self.question_file = question_file
        self.postmaster = postmaster
        self.logs = logs
        self.say = say
        self.monitor: psycopg.Connection[Any] | None = None

    # -------------------------------------------------------------------- one window

    def measured(
        self, module: str, spec: dict[str, Any], server: int | None, sampled: Path | None = None
    ) -> dict[str, Any]:
        """Run `module` (load or floor) with `spec`; its figures, with the CPU of the
        server's tree (if any) and of PostgreSQL's over its measured window; with `sampled`,
        py-spy samples the server over the window into that file."""
        argv = [sys.executable, "-m", module]
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{module.rsplit('.', 1)[-1]}.log").open("ab") as errors:
            child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
            )
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(spec))
        child.stdin.close()
        spy = None
        try:
            self._expect(child, "measuring")
            if sampled is not None and server is not None:
                spy = sampling.start(server, spec["duration"], sampled)
            before = self._sample(server)
            self._expect(child, "measured")
            after = self._sample(server)
            line = child.stdout.readline()
            child.wait(_STARTED_TIMEOUT)
            if spy is not None:
                spy.wait(_STARTED_TIMEOUT)
        finally:
            for process in (child, spy):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        if child.returncode != 0 or not line:
            raise ServerFailed(f"{module} exited with {child.returncode}; see {self.logs}")
        figures: dict[str, Any] = json.loads(line)
        figures["cpu"] = _cpu(figures, before, after)
        figures["postgres_per_request"] = _pg_per_request(figures, before, after)
        return figures

    def _expect(self, child: subprocess.Popen[str], word: str) -> None:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != word:
            child.wait(_STARTED_TIMEOUT)
            raise ServerFailed(f"expected {word!r} from the load, got {line!r}; see {self.logs}")

    def _sample(self, server: int | None) -> dict[str, Any]:
        sample: dict[str, Any] = {"at": time.perf_counter(), "machine": machine_busy_seconds()}
        sample["postgres"] = sum(tree_cpu_seconds(self.postmaster))
        if server is not None:
            sample["server"], sample["server_system"] = tree_cpu_seconds(server)
            sample["server"] += sample["server_system"]
        if self.monitor is not None:
            row = self.monitor.execute(
                "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted,"
                " tup_updated FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            if row is not None:
                keys = ("transactions", "rows_returned", "rows_fetched", "rows_inserted")
                sample["stats"] = dict(zip((*keys, "rows_updated"), row, strict=True))
        return sample

    # ---------------------------------------------------------------------- the floor

    def floor(self) -> dict[str, Any]:
        result = {}
        for name, batch, connections in (
            ("pk", 1, self.options.floor_connections),
            ("any", BATCH_ITEMS, self.options.floor_batch_connections),
        ):
            self.say(f"floor: {name} reads on {connections} connections")
            spec = {
                "dsn": self.dsn,
                "questions": str(self.question_file),
                "batch": batch,
                "connections": connections,
                "warmup": self.options.warmup,
                "duration": self.options.duration,
            }
            figures = self.measured("bench.verify.floor", spec, None)
            figures["cpu"]["client_seconds"] = figures.pop("client_cpu_seconds")
            result[name] = figures
        return result

    # ------------------------------------------------------------- the HTTP contenders

    def contender(self, server: Server, asked: list[dict[str, str]]) -> dict[str, Any]:
        try:
            ready = server.wait_ready()
            self.say(f"{server.name}: ready in {ready} s on port {server.port}")
            answers = check_answers(server, asked[:_CHECKED_QUESTIONS], self.dsn)
            single = {
                str(c): self._point(server, "/v1/verify", 1, c) for c in self.options.concurrency
            }
            batch = {
                str(c): self._point(server, "/v1/verify/batch", BATCH_ITEMS, c)
                for c in self.options.batch_concurrency
            }
            rss = _rss_mb(server.pid)
            profiled = self._profile(server, single, batch) if self.options.profile else None
        finally:
            exit_code = server.stop()
        figures = {
            "ready_seconds": ready,
            "answers": answers,
            "single": single,
            "batch": batch,
            "server_rss_mb": rss,
            "exit_code": exit_code,
        }
        if profiled is not None:
            figures["profile"] = profiled
        return figures

    def _profile(
        self, server: Server, single: dict[str, Any], batch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """One more point of each kind, at the connections of the best measured one,
        sampled by py-spy (its figures are not the measured ones: sampling costs a little)."""
        if sampling.available() is None:
            return None
        profiled = {}
        for kind, path, items, points in (
            ("single", "/v1/verify", 1, single),
            ("batch", "/v1/verify/batch", BATCH_ITEMS, batch),
        ):
            if not points:
                continue
            best = max(points.values(), key=lambda p: p["items_per_second"])
            output = self.logs / f"{server.name}-{kind}.pyspy.txt"
            output.unlink(missing_ok=True)
            figures = self._point(server, path, items, best["connections"], sampled=output)
            text = output.read_text() if output.exists() else ""
            summary = sampling.summarize(text)
            server_us = figures["cpu"]["server_us_per_item"]
            profiled[kind] = {
                "connections": best["connections"],
                "items_per_second_while_sampled": figures["items_per_second"],
                "server_us_per_item_while_sampled": server_us,
                **summary,
                "by_package_us_per_item": {
                    package: round(share * server_us, 2)
                    for package, share in summary["by_package"].items()
                },
            }
        return profiled

    def _point(
        self, server: Server, path: str, items: int, connections: int, sampled: Path | None = None
    ) -> dict[str, Any]:
        spec = {
            "port": server.port,
            "path": path,
            "headers": server.headers,
            "questions": str(self.question_file),
            "items_per_request": items,
            "connections": connections,
            "warmup": self.options.warmup,
            "duration": self.options.duration,
        }
        figures = self.measured("bench.verify.load", spec, server.pid, sampled)
        sampled_note = " (sampled by py-spy)" if sampled is not None else ""
        self.say(f"{server.name}: {point_line(path, figures)}{sampled_note}")
        return figures

    def service(self, asked: list[dict[str, str]]) -> dict[str, Any]:
        env = service_env(self.dsn, self.options.service_env)
        missing = service_missing(env)
        if missing is not None:
            self.say(f"service: not measured ({missing})")
            return {"measured": False, "reason": missing}
        try:
            partner, key = add_partner(env)
            figures = self.contender(start_service(env, key, self.logs), asked)
        except ServerFailed as exc:  # the floor and the baseline are still worth reporting
            self.say(f"service: failed ({exc})")
            return {"measured": False, "reason": str(exc)[-2000:]}
        figures["partner"] = partner
        figures["env"] = sorted(self.options.service_env)
        return {"measured": True, **figures}


def point_line(path: str, figures: dict[str, Any]) -> str:
    errors = sum(figures["errors"].values()) + figures["disconnects"]
    return (
        f"{path} x{figures['connections']}: {figures['requests_per_second']:,.0f} req/s, "
        f"{figures['items_per_second']:,.0f} items/s, p50 {figures['p50_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, {errors} errors; server "
        f"{figures['cpu'].get('server_us_per_request', 0):,.0f} µs CPU/request"
    )


def _cpu(figures: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    wall = after["at"] - before["at"]
    requests = figures.get("requests", figures.get("reads", 0)) or 1
    items = requests * figures.get("items_per_request", figures.get("items_per_read", 1))
    cpu: dict[str, Any] = {"wall_seconds": round(wall, 3)}
    postgres = after["postgres"] - before["postgres"]
    cpu["postgres_seconds"] = round(postgres, 2)
    cpu["postgres_us_per_item"] = round(postgres * 1e6 / items, 2)
    busy = postgres + figures.get("load_cpu_seconds", figures.get("client_cpu_seconds", 0.0))
    if "server" in before:
        server = after["server"] - before["server"]
        busy += server
        cpu["server_seconds"] = round(server, 2)
        cpu["server_cores"] = round(server / wall, 2)  # 1.0: one process's core, saturated
        system = after["server_system"] - before["server_system"]
        cpu["server_system_share"] = round(system / server, 3) if server > 0 else None
        cpu["server_us_per_request"] = round(server * 1e6 / requests, 1)
        cpu["server_us_per_item"] = round(server * 1e6 / items, 2)
        cpu["load_us_per_request"] = round(figures["load_cpu_seconds"] * 1e6 / requests, 1)
    machine = after["machine"] - before["machine"]
    # Cores busy with this point's processes, and with anything else on the machine (other
    # people's work, the harness): what the load generator, server and PostgreSQL did not get.
    cpu["cores_busy"] = round(busy / wall, 2)
    cpu["cores_busy_otherwise"] = round(max(machine - busy, 0.0) / wall, 2)
    return cpu


def _pg_per_request(
    figures: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> dict[str, float]:
    if "stats" not in before or "stats" not in after:
        return {}
    requests = figures.get("requests", figures.get("reads", 0)) or 1
    return {
        key: round((after["stats"][key] - before["stats"][key]) / requests, 2)
        for key in before["stats"]
    }


def _rss_mb(pid: int) -> float:
    """Resident memory of `pid`'s tree, in MB."""
    total = 0
    for each in (pid, *descendants(pid)):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return round(total / 1024, 1)


# ------------------------------------------------------------------- answers checked


def check_answers(server: Server, asked: list[dict[str, str]], dsn: str) -> dict[str, Any]:
    """Whether the server answers `asked` as `compare` does, one by one and as a batch
    (attributes and alive; anything else in an answer is ignored)."""
    pins = [q["pin"] for q in asked]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(RECORD_COLUMNS)} FROM citizens WHERE pin = ANY(%s)",  # noqa: S608
            (pins,),
        ).fetchall()
    records = {row[0]: CitizenRecord(*row) for row in rows}
    expected = []
    for body in asked:
        request = VerifyRequest.model_validate(body)
        expected.append(compare(request, records.get(request.pin))[0].model_dump(mode="json"))
    got: list[Any] = []
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as client:
        for body in asked:
            answer = client.post("/v1/verify", json=body)
            statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
            got.append(answer.json() if answer.status_code == 200 else None)
        batch = client.post("/v1/verify/batch", json={"items": asked})
    batch_got = batch.json().get("results", []) if batch.status_code == 200 else []

    def same(a: Any, b: Any) -> bool:
        return isinstance(b, dict) and all(a[k] == b.get(k) for k in ("attributes", "alive"))

    agree = sum(same(e, g) for e, g in zip(expected, got, strict=True))
    batch_agree = sum(same(e, g) for e, g in zip(expected, batch_got, strict=False))
    checked: dict[str, Any] = {
        "checked": len(asked),
        "single_agree": agree,
        "batch_agree": batch_agree,
        "single_statuses": statuses,
        "batch_status": batch.status_code,
    }
    for n, (e, g) in enumerate(zip(expected, got, strict=True)):
        if not same(e, g):
            checked["first_difference"] = {"question": n, "expected": e, "got": g}
            break
    return checked


# -------------------------------------------------------------------------- the goals


def _best(points: dict[str, Any], *, p99_below: float | None = None) -> dict[str, Any] | None:
    eligible = [
        p for p in points.values() if counts(p) and (p99_below is None or p["p99_ms"] < p99_below)
    ]
    return max(eligible, key=lambda p: p["items_per_second"], default=None)


def counts(point: dict[str, Any]) -> bool:
    """A point counts toward a goal if at most 0.1% of its answers were errors."""
    errors: int = sum(point["errors"].values()) + point["disconnects"]
    answered: int = point["requests"]
    return answered > 0 and errors <= 0.001 * (answered + errors)


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, for the service, and for the baseline for comparison."""
    floor_items = result["floor"]["any"]["items_per_second"]
    contenders = result["contenders"]
    baselines = [c for name, c in contenders.items() if name.startswith("baseline")]
    baseline = baselines[0] if baselines else None
    judged: dict[str, Any] = {}
    for name, contender in contenders.items():
        if not contender.get("measured", True):
            continue
        best_single = _best(contender["single"])
        fast_single = _best(contender["single"], p99_below=GOAL_SINGLES_P99_MS)
        best_batch = _best(contender["batch"])
        entry: dict[str, Any] = {
            "best_single_per_second": best_single and best_single["requests_per_second"],
            "best_single_at_connections": best_single and best_single["connections"],
            "best_single_with_p99_under_50ms": fast_single and fast_single["requests_per_second"],
            "singles_3000_with_p99_under_50ms": bool(
                fast_single and fast_single["requests_per_second"] >= GOAL_SINGLES_PER_SECOND
            ),
            "best_batch_items_per_second": best_batch and best_batch["items_per_second"],
            "batch_share_of_floor": best_batch
            and round(best_batch["items_per_second"] / floor_items, 3),
        }
        entry["batch_at_least_half_of_floor"] = bool(
            best_batch and entry["batch_share_of_floor"] >= GOAL_BATCH_SHARE_OF_FLOOR
        )
        if name == "service" and baseline is not None:
            by_connections = {
                c: round(p["requests_per_second"] / b["requests_per_second"], 3)
                for c, p in contender["single"].items()
                if (b := baseline["single"].get(c)) and b["requests_per_second"]
            }
            base_best = _best(baseline["single"])
            share = (
                round(best_single["requests_per_second"] / base_best["requests_per_second"], 3)
                if best_single and base_best
                else None
            )
            entry["share_of_baseline_throughput"] = share
            entry["share_of_baseline_by_connections"] = by_connections
            entry["at_least_90_percent_of_baseline"] = bool(
                share and share >= GOAL_SHARE_OF_BASELINE
            )
        judged[name] = entry
    judged["goals"] = {
        "share_of_baseline": GOAL_SHARE_OF_BASELINE,
        "singles_per_second": GOAL_SINGLES_PER_SECOND,
        "singles_p99_ms": GOAL_SINGLES_P99_MS,
        "batch_share_of_floor": GOAL_BATCH_SHARE_OF_FLOOR,
        "baseline_compared": next((n for n in contenders if n.startswith("baseline")), None),
    }
    return judged


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic"):
        versions[package] = _version(package)
    for package in ("psycopg", "psycopg-pool", "psycopg-binary"):
        versions[package] = _version(package)
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "harness_cpu_seconds": round(process_cpu_seconds(os.getpid()), 1),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bench_lines(result: dict[str, Any]) -> list[str]:
    """The summary printed at the end (and quoted in bench/README.md)."""
    floor = result["floor"]
    lines = [
        f"verify: {result['citizens']:,} citizens; floor {floor['pk']['reads_per_second']:,.0f} "
        f"PK reads/s (x{floor['pk']['connections']}), "
        f"{floor['any']['items_per_second']:,.0f} items/s in = ANY of {BATCH_ITEMS:,} "
        f"(x{floor['any']['connections']})"
    ]
    for name, contender in result["contenders"].items():
        if not contender.get("measured", True):
            lines.append(f"{name}: not measured ({contender['reason']})")
            continue
        for kind in ("single", "batch"):
            for point in contender[kind].values():
                path = "/v1/verify" if kind == "single" else "/v1/verify/batch"
                lines.append(f"{name}: {point_line(path, point)}")
    busy = [
        point["cpu"]["cores_busy_otherwise"]
        for contender in result["contenders"].values()
        if contender.get("measured", True)
        for kind in ("single", "batch")
        for point in contender[kind].values()
    ]
    if busy:
        lines.append(
            f"other work on the machine during the points: {min(busy)}-{max(busy)} cores "
            f"of {result['machine']['cores']} (load average before: "
            f"{result['machine']['load_average_before'][0]})"
        )
    service = result["goals"].get("service")
    if service is not None:
        lines.append(
            f"goals: service/baseline {service['share_of_baseline_throughput']} (>= 0.9: "
            f"{service['at_least_90_percent_of_baseline']}); singles with p99 < 50 ms "
            f"{service['best_single_with_p99_under_50ms']} /s (>= 3000: "
            f"{service['singles_3000_with_p99_under_50ms']}); batch/floor "
            f"{service['batch_share_of_floor']} (>= 0.5: {service['batch_at_least_half_of_floor']})"
        )
    return lines
