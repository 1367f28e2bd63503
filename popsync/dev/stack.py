"""A whole popsync deployment on one machine: embedded broker and PostgreSQL, topics,
schema, and worker processes. Used by `popsync demo` and the integration tests.

Workers run as separate `popsync worker NAME` processes configured only through
`POPSYNC_*` environment variables, exactly as in a container.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from popsync.dev.embedded import EmbeddedBroker, EmbeddedPostgres
from popsync.dev.publishers import register_dev_publishers
from popsync.ops.provision import migrate, provision
from popsync.settings import GroupSettings, Settings, TopicSettings, WorkerName

log = logging.getLogger(__name__)

# A short session timeout: a group join waits about half of it on the embedded
# broker (see shared notes); production keeps its own value.
EMBEDDED_SESSION_TIMEOUT_MS = 6000
# The embedded broker answers a held fetch only when its wait runs out, even when messages
# arrived meanwhile: a short wait bounds that (bench/README.md, "Latency", has the values
# tried). Apache Kafka answers as soon as a message arrives; production keeps its own value.
EMBEDDED_FETCH_MAX_WAIT_MS = 25


LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A port free on this host now (racy by nature; fine for local processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def settings_env(settings: Settings, *, secrets: bool = True) -> dict[str, str]:
    """The `POPSYNC_*` variables that reproduce `settings` in another process; without
    `secrets`, those of `SecretStr` fields are left out (for output a person sees)."""
    env: dict[str, str] = {}

    def walk(prefix: str, model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                walk(f"{key}__", value)
            elif isinstance(value, SecretStr):
                if secrets:
                    env[key] = value.get_secret_value()
            elif value is not None:
                env[key] = str(value)

    walk("POPSYNC_", settings)
    return env


def disk_usage(path: Path) -> int:
    """Bytes `path` occupies on disk, as `du` counts them (files a walk cannot read: 0)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(folder) / name).lstat().st_blocks * 512
            except OSError:
                continue
    return total


def human_size(size: int) -> str:
    """`size` bytes for a person: 512 B, 20 KB, 47.3 MB, 1.2 GB."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit == "MB" else f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:,.1f} GB"


def remove_tree(path: Path) -> str | None:
    """Remove `path` and everything in it; None, or one line saying why it failed."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"could not remove {path}: {exc.strerror or exc} ({exc.filename or path})"
    return None


class ChildProcess:
    """A `popsync …` subprocess configured only by `POPSYNC_*` variables, as in a
    container, its output in a log file."""

    def __init__(self, argv: list[str], settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, our own CLI
            [sys.executable, "-m", "popsync.cli", *argv],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop our children in order
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL after `timeout`; the exit code."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.log_path.stem, timeout)
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


class WorkerProcess(ChildProcess):
    """One `popsync worker NAME` subprocess.

    Several workers share this host, so each gets a free port of its own on 127.0.0.1
    for its `/metrics`, `/healthz` and `/readyz` (`base_url`, `metrics_url`).
    """

    def __init__(self, name: WorkerName, settings: Settings, log_path: Path) -> None:
        self.name = name
        self.port = free_port()
        endpoint = {"bind_host": LOCALHOST, "port": self.port}
        settings = settings.model_copy(
            update={"observability": settings.observability.model_copy(update=endpoint)}
        )
        super().__init__(["worker", name], settings, log_path)

    @property
    def target(self) -> str:
        """host:port of the worker's HTTP endpoint, as a Prometheus target."""
        return f"{LOCALHOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.target}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"


class ServiceProcess(ChildProcess):
    """One `popsync serve` subprocess (the verification service) on 127.0.0.1, on `port`
    or a free one (`base_url`)."""

    def __init__(self, settings: Settings, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        serve = settings.serve.model_copy(update={"bind_host": LOCALHOST, "port": self.port})
        self.settings = settings.model_copy(update={"serve": serve})
        super().__init__(["serve"], self.settings, log_path)

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        """Until /readyz answers 200; RuntimeError naming the log if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(
                    f"popsync serve exited {self.process.returncode}; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"popsync serve not ready within {timeout:g} s; see {self.log_path}")


class EmbeddedStack:
    """Broker + PostgreSQL + topics + schema; workers are started on demand."""

    def __init__(self, workdir: Path, *, fast_postgres: bool = False) -> None:
        self.workdir = workdir
        self.broker = EmbeddedBroker(workdir / "broker")
        self.postgres = EmbeddedPostgres(workdir / "pgdata", fast=fast_postgres)
        self.workers: list[WorkerProcess] = []

    def start(self) -> None:
        (self.workdir / "broker").mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.postgres.start()

    def settings_for(self, database: str = "popsync", **overrides: Any) -> Settings:
        """Settings pointing at this stack; `overrides` replace whole sections."""
        self.postgres.create_database(database)
        base: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": self.broker.bootstrap_servers,
                "session_timeout_ms": EMBEDDED_SESSION_TIMEOUT_MS,
                "fetch_max_wait_ms": EMBEDDED_FETCH_MAX_WAIT_MS,
            },
            "postgres": {"dsn": self.postgres.dsn(database)},
        }
        return Settings(**{**base, **overrides})

    def isolated_settings(self, name: str, **overrides: Any) -> Settings:
        """Settings of a pipeline of its own on this stack: database, topics, groups `name`."""
        topics: dict[str, Any] = {
            field: f"{name}.{default}"
            for field, default in TopicSettings().model_dump().items()
            if isinstance(default, str)
        }
        topics.update(overrides.pop("topics", {}))
        groups = {
            field: f"{name}-{default}" for field, default in GroupSettings().model_dump().items()
        }
        return self.settings_for(name, topics=topics, groups=groups, **overrides)

    def prepare(self, settings: Settings) -> None:
        """Topics, schema, and the development publishers (`popsync.dev.publishers`), so
        that what the simulator, demo and tests publish is signed by a known registry."""
        provision(settings)
        migrate(settings)
        register_dev_publishers(settings)

    def start_worker(self, name: WorkerName, settings: Settings, tag: str = "") -> WorkerProcess:
        worker = WorkerProcess(name, settings, self.workdir / "logs" / f"{name}{tag}.log")
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        self.postgres.stop()
        self.broker.stop()


@contextmanager
def embedded_stack(workdir: Path, *, fast_postgres: bool = False) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(workdir, fast_postgres=fast_postgres)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def wait_until(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
