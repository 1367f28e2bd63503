"""The load generator: ``python -m bench.verify.load`` in a process of its own.

N keep-alive HTTP/1.1 connections over loopback, each sending its next prebuilt request as
soon as the previous answer is in (a closed loop: the offered load is what the server
answers). The client is a bare `asyncio.Protocol` on uvloop: requests are bytes built
before the clock starts, an answer is read by its Content-Length; nothing else is parsed.
It shares the machine's cores with the server, so it must stay cheap (its CPU time is in
the result).

The spec comes as JSON on stdin (the partner's key stays out of argv); the process prints
`measuring` when the measured window opens (after the warm-up), `measured` when it closes,
then one JSON line with the figures. Only answers completed inside the window count (with
their whole latency, from the request's write to the answer's last byte).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import uvloop

from bench.verify.stats import latency_summary

_HEADER_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"
_DRAIN_SECONDS = 5.0  # in-flight answers may take this long after the window closes


@dataclass(frozen=True)
class Spec:
    port: int
    path: str
    bodies: list[bytes]  # one request's body each
    items_per_request: int
    connections: int
    warmup: float
    duration: float
    headers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    def requests(self) -> list[bytes]:
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\n{extra}"
        )
        return [
            f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
            for body in self.bodies
        ]


def build_spec(raw: dict[str, Any]) -> Spec:
    """The spec from its JSON form: `questions` (a JSONL file of verify bodies) cut into
    single requests or batches of `items_per_request`."""
    lines = Path(raw["questions"]).read_text(encoding="utf-8").splitlines()
    items = int(raw["items_per_request"])
    if items == 1:
        bodies = [line.encode() for line in lines if line]
    else:
        bodies = [
            ('{"items":[' + ",".join(lines[first : first + items]) + "]}").encode()
            for first in range(0, len(lines) - items + 1, items)
        ]
    return Spec(
        port=int(raw["port"]),
        path=str(raw["path"]),
        bodies=bodies,
        items_per_request=items,
        connections=int(raw["connections"]),
        warmup=float(raw["warmup"]),
        duration=float(raw["duration"]),
        headers=dict(raw.get("headers", {})),
    )


class _Run:
    """What every connection shares: the window, the counts, the latencies."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.requests = spec.requests()
        self.window: tuple[float, float] = (float("inf"), float("inf"))
        self.stopping = False
        self.latencies = array("d")  # seconds, answers with status 200 in the window
        self.statuses: dict[int, int] = {}  # every answer in the window, by status
        self.disconnects = 0  # connections lost with a request in flight (any time)
        self.connect_errors = 0
        self.cursors = list(range(spec.connections))  # each connection's next request
        self.in_flight = 0

    def answered(self, status: int, sent: float, now: float) -> None:
        start, end = self.window
        if start <= now <= end:  # answers completed in the window, as wrk counts them
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(now - sent)


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run, slot: int, done: asyncio.Future[None]) -> None:
        self._run = run
        self._slot = slot
        self._done = done
        self._buffer = bytearray()
        self._need = -1  # bytes of the whole answer, once its head is in
        self._status = 0
        self._sent = 0.0
        self._waiting = False  # a request is out, its answer not complete
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        if self._run.stopping:
            self._transport.close()
            return
        run = self._run
        # Each connection walks its own stripe of the requests, across reconnections.
        index = run.cursors[self._slot]
        run.cursors[self._slot] = index + run.spec.connections
        run.in_flight += 1
        self._waiting = True
        self._sent = time.perf_counter()
        self._transport.write(run.requests[index % len(run.requests)])

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._need < 0:
                end = buffer.find(_HEADER_END)
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                self._status = int(head[9:12])
                at = head.find(_LENGTH)
                if at < 0:
                    raise RuntimeError("an answer without Content-Length")
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + len(_LENGTH) : stop if stop >= 0 else len(head)])
                self._need = end + len(_HEADER_END) + length
            if len(buffer) < self._need:
                return
            del buffer[: self._need]
            self._need = -1
            self._waiting = False
            self._run.in_flight -= 1
            self._run.answered(self._status, self._sent, time.perf_counter())
            self._send()
            if not buffer:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting:
            self._waiting = False
            self._run.in_flight -= 1
            self._run.disconnects += 1
        if not self._done.done():
            self._done.set_result(None)


async def _connect(run: _Run, slot: int) -> None:
    """One connection, opened again whenever the server closes it, until the run stops."""
    loop = asyncio.get_running_loop()
    spec = run.spec
    while not run.stopping:
        done: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(
                partial(_Connection, run, slot, done), spec.host, spec.port
            )
        except OSError:
            run.connect_errors += 1
            await asyncio.sleep(0.1)
            continue
        await done


async def drive(spec: Spec, *, announce: bool = True) -> dict[str, Any]:
    run = _Run(spec)
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = [asyncio.ensure_future(_connect(run, n)) for n in range(spec.connections)]
    await asyncio.sleep(spec.warmup)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    run.window = (wall_start, wall_start + spec.duration)
    if announce:
        print("measuring", flush=True)
    await asyncio.sleep(spec.duration)
    cpu = time.process_time() - cpu_start
    if announce:
        print("measured", flush=True)
    run.stopping = True
    deadline = loop.time() + _DRAIN_SECONDS
    while run.in_flight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ok = len(run.latencies)
    return {
        "connections": spec.connections,
        "items_per_request": spec.items_per_request,
        "seconds": spec.duration,
        "requests": ok,
        "requests_per_second": round(ok / spec.duration, 1),
        "items_per_second": round(ok * spec.items_per_request / spec.duration, 1),
        **latency_summary(run.latencies),
        "errors": {str(k): v for k, v in sorted(run.statuses.items()) if k != 200},
        "disconnects": run.disconnects,
        "connect_errors": run.connect_errors,
        "unanswered_at_end": max(run.in_flight, 0),
        "load_cpu_seconds": round(cpu, 3),
        "total_seconds": round(loop.time() - started, 2),
    }


def main() -> int:
    spec = build_spec(json.loads(sys.stdin.read()))
    result = uvloop.run(drive(spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
