"""The floor: the same PIN reads on the same driver, no HTTP (``python -m bench.verify.floor``).

psycopg's async connections on uvloop, as the service uses them, each running the read
path's own statements (`popsync.adapters.postgres.partners`: the `RECORD_COLUMNS` of
`citizens` by primary key, or `= ANY` of a batch of PINs), prepared, in autocommit, one
statement after the other, and fetching the rows as tuples: no pool, no record objects, no
comparison. Like the load generator it runs in a process of its own, reads its spec as JSON
on stdin (the DSN stays out of argv), prints `measuring` / `measured` around the window and
then one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import psycopg
import uvloop

from bench.verify.dataset import read_questions
from bench.verify.stats import latency_summary
from popsync.verification.comparison import RECORD_COLUMNS

_COLUMNS = ", ".join(RECORD_COLUMNS)
ONE = f"SELECT {_COLUMNS} FROM citizens WHERE pin = %s"  # noqa: S608 - constant columns
MANY = f"SELECT {_COLUMNS} FROM citizens WHERE pin = ANY(%s)"  # noqa: S608


async def reads(
    dsn: str,
    pins: list[str],
    *,
    batch: int,
    connections: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """Reads of `pins` (one by one when `batch` is 1, else `= ANY` of `batch`) on
    `connections` connections at once, for `duration` seconds after `warmup`."""
    keys: list[Any] = (
        pins
        if batch == 1
        else [pins[i : i + batch] for i in range(0, len(pins) - batch + 1, batch)]
    )
    query = ONE if batch == 1 else MANY
    window = [float("inf"), float("inf")]
    latencies = array("d")
    found = 0
    stopping = False

    async def reader(conn: psycopg.AsyncConnection[Any], slot: int) -> None:
        nonlocal found
        index = slot
        async with conn.cursor() as cur:
            while not stopping:
                key = keys[index % len(keys)]
                index += connections
                sent = time.perf_counter()
                await cur.execute(query, (key,), prepare=True)
                rows = await cur.fetchall()
                now = time.perf_counter()
                if window[0] <= now <= window[1]:
                    latencies.append(now - sent)
                    found += len(rows)

    conns = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(connections)
    ]
    try:
        tasks = [asyncio.ensure_future(reader(conn, n)) for n, conn in enumerate(conns)]
        await asyncio.sleep(warmup)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        window[:] = [wall_start, wall_start + duration]
        print("measuring", flush=True)
        await asyncio.sleep(duration)
        cpu = time.process_time() - cpu_start
        print("measured", flush=True)
        stopping = True
        await asyncio.gather(*tasks)
    finally:
        for conn in conns:
            await conn.close()
    done = len(latencies)
    return {
        "connections": connections,
        "items_per_read": batch,
        "seconds": duration,
        "reads": done,
        "reads_per_second": round(done / duration, 1),
        "items_per_second": round(done * batch / duration, 1),
        "rows_found_share": round(found / max(done * batch, 1), 4),
        **latency_summary(latencies),
        "client_cpu_seconds": round(cpu, 3),
        "client_cpu_us_per_item": round(cpu * 1e6 / max(done * batch, 1), 2),
    }


def main() -> int:
    spec = json.loads(sys.stdin.read())
    pins = [question["pin"] for question in read_questions(Path(spec["questions"]))]
    result = uvloop.run(
        reads(
            spec["dsn"],
            pins,
            batch=int(spec["batch"]),
            connections=int(spec["connections"]),
            warmup=float(spec["warmup"]),
            duration=float(spec["duration"]),
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
