"""faust's consumption alone: popsync's own batch runtime with a step that does nothing.

The most a faust-based worker can do on this machine: the same runtime as every popsync
worker (`popsync.runtime.worker.Worker.subscribe`, `run_worker`) takes batches from the raw
topic and throws them away. No decoding, no output, no store. Its events/s and CPU per
event bound each of popsync's three stages from above.

Run by the harness as ``python -m bench.pipeline.ceiling`` with the stack's ``POPSYNC_*``
settings, ``BENCH_EVENTS`` and ``BENCH_RESULT``; once it has taken that many messages it
writes what it measured to the ``BENCH_RESULT`` file (JSON) and exits. (A file, since
faust's worker sends standard output to its log.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from popsync.runtime.messages import InboundMessage
from popsync.runtime.worker import Worker, run_worker
from popsync.settings import Settings


class Counter:
    """The step: counts messages; the clocks start at the first batch, which is not counted
    (it was fetched before they started)."""

    def __init__(self, events: int, result: Path) -> None:
        self.events = events
        self.result = result
        self.seen = 0
        self.counted = 0
        self.started: tuple[float, float] | None = None  # (wall, CPU)

    async def __call__(self, batch: Sequence[InboundMessage]) -> None:
        if self.started is None:
            self.started = (time.monotonic(), time.process_time())
        else:
            self.counted += len(batch)
        self.seen += len(batch)
        if self.seen >= self.events:
            self.report()

    def report(self) -> None:
        assert self.started is not None
        wall = time.monotonic() - self.started[0]
        cpu = time.process_time() - self.started[1]
        measured = {"events": self.counted, "seconds": wall, "cpu_seconds": cpu}
        self.result.write_text(json.dumps(measured), encoding="utf-8")
        os._exit(0)  # a measurement: nothing to drain or commit


def main() -> None:
    settings = Settings()
    worker = Worker(settings, "validator")  # the validator's group and input topic
    step = Counter(int(os.environ["BENCH_EVENTS"]), Path(os.environ["BENCH_RESULT"]))
    worker.subscribe(settings.topics.registry_events, step)
    run_worker(worker)


if __name__ == "__main__":
    main()
