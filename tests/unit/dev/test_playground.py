"""`popsync stack up|down` without servers: the state file, the lock, stale and live pids,
the printed variables, and the work-directory helpers the demo uses."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from popsync.dev.embedded import pid_state
from popsync.dev.playground import (
    DSN_VARIABLE,
    LOCK_FILE,
    STATE_FILE,
    StackState,
    export_lines,
    read_state,
    stack_down,
    stack_env,
    stack_up,
    stop_process,
    write_state,
)
from popsync.dev.stack import human_size, remove_tree
from popsync.settings import Settings

# Holds the work directory's lock like a running `stack up`; "popsync" is in its argv.
HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def _state(pid: int, **changes: object) -> StackState:
    fields: dict[str, object] = {
        "pid": pid,
        "env": {DSN_VARIABLE: "postgresql://postgres@127.0.0.1:1/popsync"},
        "worker_ports": {"validator": 1},
        "broker": "127.0.0.1:2",
        **changes,
    }
    return StackState(**fields)  # type: ignore[arg-type]


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.Popen(["true"])  # noqa: S607
    child.wait()  # reaped: the pid names no process now
    return child.pid


@pytest.fixture
def running_stack(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that holds the lock, recorded in the state file as the stack."""
    child = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / LOCK_FILE), "popsync"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    write_state(tmp_path, _state(child.pid))
    yield child
    child.kill()
    child.wait()


def test_the_state_round_trips_and_a_broken_file_reads_as_never_running(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    state = _state(123, service_pids={"broker": 7}, prometheus_url="http://127.0.0.1:9")
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    (tmp_path / STATE_FILE).write_text("{not json")
    broken = read_state(tmp_path)
    assert broken is not None and broken.pid == 0


def test_down_without_a_work_dir_or_state_says_none_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack_down(workdir=tmp_path / "absent") == 1
    assert stack_down(workdir=tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"popsync stack: none running in {tmp_path / 'absent'}",
        f"popsync stack: none running in {tmp_path}",
    ]


def test_down_cleans_a_stale_state_and_signals_no_process_that_is_not_ours(
    tmp_path: Path, dead_pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = subprocess.Popen(["sleep", "30"])  # noqa: S607 - a pid reused by another program
    try:
        write_state(tmp_path, _state(dead_pid, service_pids={"broker": stranger.pid}))
        assert stack_down(workdir=tmp_path) == 1
        assert stranger.poll() is None, "a process that is not the stack's was signalled"
    finally:
        stranger.kill()
        stranger.wait()
    assert read_state(tmp_path) is None
    assert capsys.readouterr().err.strip().splitlines() == [
        f"popsync stack: none running in {tmp_path}; "
        f"removed a stale state file (pid {dead_pid}, no longer running)"
    ]


def test_up_refuses_a_second_stack_naming_the_pid_and_down(
    tmp_path: Path, running_stack: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack_up(workdir=tmp_path, with_prometheus=False, background=False) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"pid {running_stack.pid}" in err[0]
    assert f"popsync stack down --workdir {tmp_path}" in err[0]
    assert running_stack.poll() is None


def test_down_stops_the_recorded_stack_and_removes_its_state(
    tmp_path: Path, running_stack: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack_down(workdir=tmp_path) == 0
    assert running_stack.wait(5) == -signal.SIGTERM
    assert read_state(tmp_path) is None
    assert f"stopped pid {running_stack.pid}" in capsys.readouterr().out


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    stubborn = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline()
    assert stop_process(stubborn.pid, grace=0.5) is False
    assert pid_state(stubborn.pid) != "alive"
    assert stubborn.wait(5) == -signal.SIGKILL


def test_the_printed_variables_are_what_the_stack_changed_and_no_secret_but_the_dsn() -> None:
    settings = Settings(
        kafka={
            "bootstrap_servers": "127.0.0.1:1234",
            "session_timeout_ms": 6000,
            "sasl_password": "not-printed",
        },
        postgres={"dsn": "postgresql://postgres@127.0.0.1:5555/popsync"},
    )
    env = stack_env(settings)
    assert env["POPSYNC_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:1234"
    assert env["POPSYNC_KAFKA__SESSION_TIMEOUT_MS"] == "6000"
    assert env[DSN_VARIABLE] == "postgresql://postgres@127.0.0.1:5555/popsync"
    assert "not-printed" not in "".join(env.values())
    assert "POPSYNC_TOPICS__REGISTRY_EVENTS" not in env  # a default: nothing to export
    assert export_lines({"POPSYNC_X": "a b"}) == ["export POPSYNC_X='a b'"]


def test_work_dir_helpers(tmp_path: Path) -> None:
    assert [human_size(n) for n in (512, 20 * 1024, 47 * 1024**2, 3 * 1024**3)] == [
        "512 B",
        "20 KB",
        "47.0 MB",
        "3.0 GB",
    ]
    assert remove_tree(tmp_path / "absent") is None
    a_file = tmp_path / "file"
    a_file.write_text("x")
    problem = remove_tree(a_file)  # not a directory: one line, no traceback
    assert problem is not None and "\n" not in problem and str(a_file) in problem
