"""`popsync stack up --background` / `popsync stack down`, as a person runs them: real
processes, real broker and PostgreSQL, and the printed `export` lines used as printed."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from popsync.dev.embedded import EmbeddedPostgres, pid_state
from popsync.dev.playground import StackState, read_state
from popsync.settings import Settings
from popsync.topology import topic_specs

pytestmark = pytest.mark.integration

UP_TIMEOUT_S = 240


def popsync(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI, fixed argv
        [sys.executable, "-m", "popsync.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def exported(stdout: str) -> dict[str, str]:
    """The variables of the `export NAME=VALUE` lines, as a shell would read them."""
    env = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0]
    return env


@pytest.fixture
def stack_dir(
    server_workdir: Callable[[str], AbstractContextManager[Path]],
) -> Iterator[Path]:
    with server_workdir("playground") as workdir:
        try:
            yield workdir
        finally:
            popsync("stack", "down", "--workdir", str(workdir))  # after a failure: no leftovers


def test_stack_up_prints_exports_that_reach_the_stack_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = str(stack_dir)
    up = popsync("stack", "up", "--background", "--workdir", workdir, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, up.stdout + up.stderr
    env = exported(up.stdout)
    assert {
        "POPSYNC_KAFKA__BOOTSTRAP_SERVERS",
        "POPSYNC_KAFKA__SESSION_TIMEOUT_MS",
        "POPSYNC_POSTGRES__DSN",
    } <= env.keys()
    assert "popsync simulate --citizens 100 --publish" in up.stdout
    state = read_state(stack_dir)
    assert isinstance(state, StackState) and pid_state(state.pid) == "alive"

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    listed = AdminClient(dict(settings.kafka.librdkafka())).list_topics(timeout=10).topics
    assert {spec.name for spec in topic_specs(settings)} <= set(listed)
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"citizens", "citizen_history", "citizen_conflicts"} <= tables

    again = popsync("stack", "up", "--background", "--workdir", workdir)
    assert again.returncode == 1
    assert f"pid {state.pid}" in again.stderr and "popsync stack down" in again.stderr

    down = popsync("stack", "down", "--workdir", workdir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "PostgreSQL data kept" in down.stdout and "in memory only" in down.stdout
    for pid in (state.pid, *state.service_pids.values()):
        assert pid_state(pid) != "alive", f"pid {pid} still runs"
    assert not EmbeddedPostgres(stack_dir / "pgdata").is_running
    assert read_state(stack_dir) is None

    second = popsync("stack", "down", "--workdir", workdir)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [f"popsync stack: none running in {workdir}"]
