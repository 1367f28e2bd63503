"""`popsync stack up|down`: the embedded broker and PostgreSQL (and Prometheus) left
running for a person to try popsync by hand, from another shell.

`stack up` starts the services, provisions the topics and the schema, writes a state file
(`stack.json`: its pid, the `POPSYNC_*` variables, the ports) in the work directory, prints
the `export` lines and stays until Ctrl-C or SIGTERM. `--background` runs that same
command as a detached child logging to `stack.log` and returns once the state file
appears; `stack down` signals the pid the state file names. A lock on `stack.lock`, held
while a stack runs (the kernel drops it when that process dies, however it dies), is what
says one runs: it keeps two off one work directory, and a state file without it is stale.

PostgreSQL's data stays in `WORKDIR/pgdata` across runs; the broker keeps everything in
memory, so its topics and events are gone whenever the stack stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psycopg
from confluent_kafka import KafkaException

from popsync.dev.embedded import EmbeddedPostgres, pid_state
from popsync.dev.embedded.prometheus import JOB as PROMETHEUS_JOB
from popsync.dev.embedded.prometheus import EmbeddedPrometheus
from popsync.dev.stack import (
    LOCALHOST,
    EmbeddedStack,
    disk_usage,
    free_port,
    human_size,
    settings_env,
)
from popsync.settings import WORKER_NAMES, Settings

DEFAULT_WORKDIR = Path(".popsync/stack")
STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
LOG_FILE = "stack.log"
DATABASE = "popsync"
DSN_VARIABLE = "POPSYNC_POSTGRES__DSN"
AUDIT_KEY_VARIABLE = "POPSYNC_SERVE__AUDIT_KEY"
AUDIT_KEY_FILE = "audit.key"
READY_TIMEOUT_S = 180  # a first start runs initdb; a busy machine can take a while
STOP_GRACE_S = 60  # the stack stops PostgreSQL (up to 30 s), broker, Prometheus in turn
LEFTOVER_GRACE_S = 10
# Startup failures a person can act on; they get one line, never a traceback.
START_ERRORS = (RuntimeError, OSError, psycopg.Error, KafkaException, subprocess.SubprocessError)


@dataclass(frozen=True)
class StackState:
    """What `stack.json` records: enough to print the banner again and to stop it all."""

    pid: int
    env: dict[str, str]
    worker_ports: dict[str, int]
    broker: str
    prometheus_url: str | None = None
    service_pids: dict[str, int] = field(default_factory=dict)  # broker, prometheus


# --------------------------------------------------------------------------- state file


def resolve_workdir(workdir: Path | None) -> Path:
    return (workdir or DEFAULT_WORKDIR).absolute()


def write_state(workdir: Path, state: StackState) -> None:
    partial = workdir / f"{STATE_FILE}.tmp"
    partial.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    os.replace(partial, workdir / STATE_FILE)  # a reader never sees half a file


def read_state(workdir: Path) -> StackState | None:
    """The recorded stack; None if there is none. A file that does not parse is
    reported as a stack whose pid is 0, which is never running."""
    try:
        data: Any = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
        return StackState(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return StackState(pid=0, env={}, worker_ports={}, broker="")


def remove_state(workdir: Path) -> None:
    (workdir / STATE_FILE).unlink(missing_ok=True)


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b"" if Path("/proc/self").exists() else None
    except OSError:
        return None


def is_running(pid: int, marker: bytes = b"popsync") -> bool:
    """`pid` is a live process whose command line holds `marker`: a pid reused by some
    other program since the state was written is not ours to signal."""
    if pid <= 0 or pid_state(pid) != "alive":
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or marker in cmdline  # no /proc: trust the pid alone


def stop_process(pid: int, grace: float) -> bool:
    """SIGTERM, wait `grace` seconds, then SIGKILL. True if it stopped within the grace."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, grace):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, 5)
    return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_state(pid) == "alive":
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_leftovers(workdir: Path, state: StackState) -> None:
    """Stop the services of a stack process that died without stopping them (SIGKILL):
    they run in sessions of their own and outlive it."""
    markers = {"broker": b"tansu", "prometheus": b"prometheus"}
    for name, pid in state.service_pids.items():
        if is_running(pid, markers.get(name, name.encode())):
            stop_process(pid, LEFTOVER_GRACE_S)
    postgres = EmbeddedPostgres(workdir / "pgdata")
    if postgres.is_running:
        postgres.stop()


def _down_command(workdir: Path | None) -> str:
    if workdir is None:
        return "popsync stack down"
    return f"popsync stack down --workdir {shlex.quote(str(workdir))}"


def _clear_stale(workdir: Path, state: StackState) -> str:
    """Clean up after a stack that died without doing so; what was done, for a person."""
    stop_leftovers(workdir, state)
    remove_state(workdir)
    what = f"pid {state.pid}" if state.pid else "unreadable"
    return f"removed a stale state file ({what}, no longer running)"


def _lock(root: Path) -> IO[str] | None:
    """`stack.lock`, locked for this process's life; None while another process holds it."""
    handle = (root / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _running_message(root: Path, workdir: Path | None) -> str:
    state = read_state(root)
    who = f"running in {root} (pid {state.pid})" if state else f"starting in {root}"
    return f"popsync stack: already {who}; stop it with `{_down_command(workdir)}`"


# ------------------------------------------------------------------------------ output


def stack_env(settings: Settings) -> dict[str, str]:
    """The variables that point another shell at the stack: the settings that differ from
    popsync's defaults, and no secret but the local DSN and the stack's audit key."""
    defaults = settings_env(Settings.model_construct(), secrets=False)
    changed = {
        key: value
        for key, value in settings_env(settings, secrets=False).items()
        if defaults.get(key) != value
    }
    env = {**changed, DSN_VARIABLE: settings.postgres.dsn.get_secret_value()}
    if settings.serve.audit_key is not None:
        env[AUDIT_KEY_VARIABLE] = settings.serve.audit_key.get_secret_value()
    return env


def stack_audit_key(workdir: Path) -> str:
    """The key of the stack's access audit: made once, kept with its data (0600), since
    the audit rows in its PostgreSQL can only be found again with the same key."""
    path = workdir / AUDIT_KEY_FILE
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32), encoding="ascii")
    return path.read_text(encoding="ascii").strip()


def export_lines(env: dict[str, str]) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in env.items()]


def describe(state: StackState, workdir: Path) -> str:
    """The banner: what runs where, the exports to paste, what to try next."""
    lines = [
        f"  broker      {state.broker} (in memory: its topics and events go when it stops)",
        f"  PostgreSQL  {state.env[DSN_VARIABLE]} (data in {workdir / 'pgdata'}, kept)",
    ]
    if state.prometheus_url is not None:
        targets = ", ".join(f"{w} :{p}" for w, p in state.worker_ports.items())
        lines.append(
            f"  Prometheus  {state.prometheus_url} (job {PROMETHEUS_JOB}, scrapes the workers "
            f"started as below: {targets})"
        )
    lines += ["", "Paste into another shell:", *export_lines(state.env)]
    lines += ["", "Then try (each worker in a shell of its own, with the exports):"]
    lines += [
        f"  POPSYNC_OBSERVABILITY__PORT={port} popsync worker {name}"
        for name, port in state.worker_ports.items()
    ]
    lines += [
        "  popsync simulate --citizens 100 --publish",
        "  popsync dlq list",
        "  popsync serve     # the verification service on http://127.0.0.1:8080",
        "  popsync partners add bank-demo --operator demo --purpose KYC",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- stack up


def stack_up(*, workdir: Path | None, with_prometheus: bool, background: bool) -> int:
    root = resolve_workdir(workdir)
    root.mkdir(parents=True, exist_ok=True)
    lock = _lock(root)
    if lock is None:
        print(_running_message(root, workdir), file=sys.stderr)
        return 1
    state = read_state(root)
    if state is not None:
        print(f"popsync stack: {_clear_stale(root, state)}")
    if background:
        lock.close()  # the detached child takes it
        return _start_background(root, workdir, with_prometheus)
    return _serve(root, workdir, with_prometheus, lock)


def _raise_interrupt(_: int, __: FrameType | None) -> None:
    raise KeyboardInterrupt


def _serve(root: Path, workdir: Path | None, with_prometheus: bool, lock: IO[str]) -> int:
    # `stack down` (SIGTERM) stops it like Ctrl-C; SIGINT is set too because a shell
    # starts `cmd &` with it ignored, and Python then leaves it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    stack = EmbeddedStack(root)
    prometheus = EmbeddedPrometheus(root / "prometheus") if with_prometheus else None
    code = 0
    try:
        started = time.monotonic()
        state = _start(stack, prometheus)
        write_state(root, state)
        print(f"popsync stack: up in {time.monotonic() - started:.1f} s, in {root}")
        print(describe(state, root))
        print(f"\nCtrl-C or `{_down_command(workdir)}` stops it.", flush=True)
        code = _watch(stack, prometheus)
    except KeyboardInterrupt:
        print("\npopsync stack: stopping", flush=True)
    except START_ERRORS as exc:
        print(f"popsync stack: {_first_line(exc)} (logs under {root})", file=sys.stderr)
        code = 1
    finally:
        _stop(root, stack, prometheus)
        lock.close()
    print(f"popsync stack: stopped; {_kept(root)}", flush=True)
    return code


def _start(stack: EmbeddedStack, prometheus: EmbeddedPrometheus | None) -> StackState:
    stack.start()
    settings = stack.settings_for(
        DATABASE,
        observability={"bind_host": LOCALHOST},
        serve={"audit_key": stack_audit_key(stack.workdir)},
    )
    stack.prepare(settings)
    ports: dict[str, int] = {name: free_port() for name in WORKER_NAMES}
    services = {"broker": stack.broker.pid or 0}
    if prometheus is not None:
        prometheus.set_targets((name, f"{LOCALHOST}:{port}") for name, port in ports.items())
        prometheus.start()
        services["prometheus"] = prometheus.pid or 0
    return StackState(
        pid=os.getpid(),
        env=stack_env(settings),
        worker_ports=ports,
        broker=stack.broker.bootstrap_servers,
        prometheus_url=prometheus.url if prometheus is not None else None,
        service_pids=services,
    )


def _watch(stack: EmbeddedStack, prometheus: EmbeddedPrometheus | None) -> int:
    """Wait for a signal; 1 if a service exits on its own meanwhile."""
    while True:
        time.sleep(1)
        down = [
            name
            for name, running in (
                ("broker", stack.broker.is_running),
                ("PostgreSQL", stack.postgres.is_running),
                ("Prometheus", prometheus is None or prometheus.is_running),
            )
            if not running
        ]
        if down:
            print(f"popsync stack: {', '.join(down)} exited; stopping", file=sys.stderr)
            return 1


def _stop(root: Path, stack: EmbeddedStack, prometheus: EmbeddedPrometheus | None) -> None:
    # A second Ctrl-C must not cut the stop short and leave servers running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if prometheus is not None:
        prometheus.stop()
    stack.stop()
    state = read_state(root)
    if state is not None and state.pid == os.getpid():
        remove_state(root)


def _kept(root: Path) -> str:
    pgdata = root / "pgdata"
    return (
        f"PostgreSQL data kept in {pgdata} ({human_size(disk_usage(pgdata))}); "
        "the broker's topics and events were in memory only and are gone"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _start_background(root: Path, workdir: Path | None, with_prometheus: bool) -> int:
    """Run `stack up` detached, in a session of its own, and wait for its state file."""
    argv = [sys.executable, "-m", "popsync.cli", "stack", "up", "--workdir", str(root)]
    if with_prometheus:
        argv.append("--with-prometheus")
    log_path = root / LOG_FILE
    with log_path.open("ab") as log:
        child = subprocess.Popen(  # noqa: S603 - fixed argv, our own CLI
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # outlives this shell's Ctrl-C and this process
        )
    started = time.monotonic()
    try:
        state = _wait_ready(root, child)
    except KeyboardInterrupt:
        stop_process(child.pid, STOP_GRACE_S)
        print("\npopsync stack: interrupted; stopped", file=sys.stderr)
        return 130
    if state is None:
        print(f"popsync stack: did not start: {_last_line(log_path)} (log {log_path})")
        return 1
    print(f"popsync stack: up in {time.monotonic() - started:.1f} s, pid {child.pid}, in {root}")
    print(describe(state, root))
    print(f"\n`{_down_command(workdir)}` stops it; its log: {log_path}")
    return 0


def _wait_ready(root: Path, child: subprocess.Popen[bytes]) -> StackState | None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state(root)
        if state is not None and state.pid == child.pid:
            return state
        if child.poll() is not None:
            return None
        time.sleep(0.2)
    stop_process(child.pid, STOP_GRACE_S)
    return None


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


# ----------------------------------------------------------------------------- stack down


def stack_down(*, workdir: Path | None) -> int:
    root = resolve_workdir(workdir)
    if not root.is_dir():
        print(f"popsync stack: none running in {root}", file=sys.stderr)
        return 1
    lock = _lock(root)
    if lock is not None:  # nothing runs here; clean up after one that died
        with lock:
            state = read_state(root)
            stale = "" if state is None else f"; {_clear_stale(root, state)}"
        print(f"popsync stack: none running in {root}{stale}", file=sys.stderr)
        return 1
    state = read_state(root)
    if state is None or not is_running(state.pid):
        print(f"popsync stack: none running in {root} (one may be starting)", file=sys.stderr)
        return 1
    if not stop_process(state.pid, STOP_GRACE_S):
        print(f"popsync stack: pid {state.pid} ignored SIGTERM; killed it", file=sys.stderr)
        stop_leftovers(root, state)
    remove_state(root)
    print(f"popsync stack: stopped pid {state.pid}; {_kept(root)}")
    return 0
