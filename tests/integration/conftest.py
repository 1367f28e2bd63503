"""Session fixtures: one real broker, one real PostgreSQL, one process per worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer, read_to_end
from popsync.dev.stack import EmbeddedStack, embedded_stack
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with embedded_stack(tmp_path_factory.mktemp("stack"), fast_postgres=True) as running:
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
    return Publisher(BatchProducer(pipeline.kafka), pipeline.topics.registry_events)


Query = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture(scope="session")
def query(pipeline: Settings) -> Query:
    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(pipeline.postgres.dsn.get_secret_value()) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    return run


def eventually(probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll until `probe` returns something truthy; the pipeline is asynchronous."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def read_until(
    settings: Settings,
    topic: str,
    enough: Callable[[list[bytes | None]], bool],
    timeout: float = 60.0,
) -> list[bytes | None]:
    """The values of `topic`, re-read to its end until `enough` of them have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        values = [value for _, _, value in read_to_end(settings.kafka, topic, timeout)]
        if enough(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.25)
