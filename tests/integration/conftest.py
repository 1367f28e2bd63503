"""Session fixtures: one real broker, one real PostgreSQL, one process per worker."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.dev.stack import EmbeddedStack, embedded_stack
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from tests.polling import Query
from tests.signing import DEV_SIGNERS

ServerWorkdir = Callable[[str], AbstractContextManager[Path]]


def _remove_all_but_logs(root: Path) -> None:
    """Best effort, as pytest's own clean-up: a file that will not go stays."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            if not name.endswith(".log"):
                (Path(folder) / name).unlink(missing_ok=True)
        if folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)


@pytest.fixture(scope="session")
def server_workdir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> ServerWorkdir:
    """A new directory for embedded servers (a broker, a PostgreSQL, a whole stack), as a
    context: once it exits, and the servers in it have stopped, everything in it but the
    logs is removed. pytest removes its temporary directories only after a session that
    passed (tmp_path_retention_policy = "failed") and keeps those of the last sessions that
    failed, while one stack's data is hundreds of MB; its logs are what a failure message
    points at. `--keep-server-data` keeps everything."""
    keep = request.config.getoption("--keep-server-data")

    @contextmanager
    def workdir(name: str) -> Iterator[Path]:
        path = tmp_path_factory.mktemp(name)
        try:
            yield path
        finally:
            if not keep:
                _remove_all_but_logs(path)

    return workdir


@pytest.fixture(scope="session")
def stack(server_workdir: ServerWorkdir) -> Iterator[EmbeddedStack]:
    with (
        server_workdir("stack") as workdir,
        embedded_stack(workdir, fast_postgres=True) as running,
    ):
        yield running


@pytest.fixture(scope="session")
def pipeline(stack: EmbeddedStack) -> Iterator[Settings]:
    """Topics, schema and the three workers, shared by the pipeline tests."""
    settings = stack.settings_for("pipeline")
    stack.prepare(settings)
    workers = [stack.start_worker(name, settings) for name in WORKER_NAMES]
    yield settings
    for worker in workers:
        assert worker.alive, f"worker {worker.name} died; see {worker.log_path}"
    stack.stop_workers()


@pytest.fixture(scope="session")
def publisher(pipeline: Settings) -> Publisher:
    return Publisher(BatchProducer(pipeline.kafka), pipeline.topics.registry_events, DEV_SIGNERS)


@pytest.fixture(scope="session")
def query(pipeline: Settings) -> Query:
    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(pipeline.postgres.dsn.get_secret_value()) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    return run
