"""Waiting for the asynchronous pipeline in the integration tests: poll until an answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from popsync.adapters.kafka.reader import read_to_end
from popsync.settings import Settings

# The `query` fixture of tests/integration/conftest.py: runs SQL on the pipeline's database.
Query = Callable[..., list[tuple[Any, ...]]]


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
