"""Every command fails fast and in one line when the broker or PostgreSQL cannot be reached:
the real CLI, in its own process, against a closed port (and, for the worker, a real
PostgreSQL with the broker missing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from popsync.dev.stack import EmbeddedStack, free_port, settings_env
from popsync.settings import Settings

# A correctness bound (the requirement is 10 s with a margin for a loaded machine's start-up),
# not a benchmark.
BOUND_SECONDS = 15


def run_cli(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "popsync", *args],
        env={**_without_popsync(os.environ), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, time.monotonic() - started


def _without_popsync(environ: os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.upper().startswith("POPSYNC_")}


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Settings whose broker and PostgreSQL are closed ports on this host."""
    return {
        "POPSYNC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "POPSYNC_POSTGRES__DSN": f"postgresql://popsync:s3cret@127.0.0.1:{free_port()}/popsync",
    }


BROKER_COMMANDS = [
    ("topics", "create"),
    ("dlq", "list"),
    ("dlq", "replay", "--all"),
    ("simulate", "--citizens", "2", "--publish"),
    ("publish", "--source", "civil-status", "FILE"),
    ("backfill", "FILE"),
]
DATABASE_COMMANDS = [
    ("db", "migrate"),
    ("worker", "validator"),
    ("review", "list"),
    ("review", "resolve", "some-id", "--reject"),
]


@pytest.mark.parametrize("args", BROKER_COMMANDS, ids=" ".join)
def test_an_unreachable_broker_is_one_line_and_exit_3_within_the_bound(
    nowhere: dict[str, str], args: tuple[str, ...], tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n", encoding="utf-8")
    result, took = run_cli(nowhere, *[str(events) if a == "FILE" else a for a in args])
    address = nowhere["POPSYNC_KAFKA__BOOTSTRAP_SERVERS"]
    assert result.stderr.splitlines() == [
        f"popsync: cannot reach the Kafka broker at {address} "
        "(POPSYNC_KAFKA__BOOTSTRAP_SERVERS) within 5 s"
    ]
    assert result.returncode == 3
    assert took < BOUND_SECONDS


@pytest.mark.parametrize(
    "args", [*DATABASE_COMMANDS, ("backfill", "--dead-letters", "OUT", "FILE")], ids=" ".join
)
def test_an_unreachable_database_is_one_line_and_exit_3_within_the_bound(
    nowhere: dict[str, str], args: tuple[str, ...], tmp_path: Path
) -> None:
    archive = tmp_path / "archive.avro"
    archive.write_bytes(b"Obj\x01")
    paths = {"FILE": str(archive), "OUT": str(tmp_path / "parked.jsonl")}
    result, took = run_cli(nowhere, *[paths.get(a, a) for a in args])
    port = nowhere["POPSYNC_POSTGRES__DSN"].rsplit(":", 1)[1].split("/")[0]
    assert result.stderr.splitlines() == [
        f"popsync: cannot reach PostgreSQL at 127.0.0.1:{port}/popsync "
        "(POPSYNC_POSTGRES__DSN) within 5 s: Connection refused"
    ]
    assert "s3cret" not in result.stderr
    assert result.returncode == 3
    assert took < BOUND_SECONDS


def test_a_backfill_told_to_write_where_it_cannot_says_so_at_once(
    nowhere: dict[str, str], tmp_path: Path
) -> None:
    archive = tmp_path / "archive.avro"
    archive.write_bytes(b"Obj\x01")
    out = tmp_path / "missing-folder" / "parked.jsonl"
    result, took = run_cli(nowhere, "backfill", "--dead-letters", str(out), str(archive))
    assert result.stderr.splitlines() == [
        f"popsync: cannot write dead letters to {out}: No such file or directory"
    ]
    assert result.returncode == 2
    assert took < BOUND_SECONDS


def test_a_worker_without_its_broker_stops_in_one_line(stack: EmbeddedStack) -> None:
    settings = stack.settings_for("cli_failures")
    dead_broker = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
            )
        }
    )
    result, took = run_cli(settings_env(dead_broker), "worker", "synchronizer")
    assert result.stderr.splitlines() == [
        f"popsync: cannot reach the Kafka broker at {dead_broker.kafka.bootstrap_servers} "
        "(POPSYNC_KAFKA__BOOTSTRAP_SERVERS) within 5 s"
    ]
    assert result.returncode == 3
    assert took < BOUND_SECONDS


def test_provisioning_commands_succeed_against_the_real_services(stack: EmbeddedStack) -> None:
    settings: Settings = stack.isolated_settings("cli_provision")
    env = settings_env(settings)
    for args in (("db", "migrate"), ("topics", "create"), ("topics", "create")):
        result, _ = run_cli(env, *args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
