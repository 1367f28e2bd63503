"""The baseline: a minimal FastAPI service doing only the select and the comparison.

``python -m bench.verify.baseline --port P [--workers N]``, the DSN in
``BENCH_VERIFY_DSN``. The same request and answer models as the service
(`popsync.verification.models`), the same reads (`read_citizen`, `read_citizens`) and the
same comparison (`compare`), from a `psycopg_pool.AsyncConnectionPool` of the service's
default size, on uvicorn with the service's server options (uvloop, httptools, no access
log). Nothing else: no authentication, quota, audit, policy, metrics or admission control.
Its pool's connections are in autocommit, so a read is one round trip.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Response
from psycopg_pool import AsyncConnectionPool

from popsync.adapters.postgres.partners import read_citizen, read_citizens
from popsync.settings import ServeSettings
from popsync.verification.comparison import CitizenRecord, compare
from popsync.verification.models import (
    VerifyAnswer,
    VerifyBatchAnswer,
    VerifyBatchRequest,
    VerifyRequest,
)

DSN_VARIABLE = "BENCH_VERIFY_DSN"
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
SERVER_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "access_log": False,
    "log_level": "warning",
}


class Store(Protocol):
    """Where the answers come from: PostgreSQL here, memory in `costs.py`."""

    async def one(self, pin: str) -> CitizenRecord | None: ...

    async def many(self, pins: list[str]) -> dict[str, CitizenRecord]: ...


class PoolStore:
    """The read path's own reads, on a connection of the pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def one(self, pin: str) -> CitizenRecord | None:
        async with self._pool.connection() as conn:
            return await read_citizen(conn, pin)

    async def many(self, pins: list[str]) -> dict[str, CitizenRecord]:
        async with self._pool.connection() as conn:
            return await read_citizens(conn, pins)


def build_app(store: Store, lifespan: Lifespan | None = None) -> FastAPI:
    """The endpoints: the select and the comparison, nothing else."""
    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/verify")
    async def verify(body: VerifyRequest) -> VerifyAnswer:
        return compare(body, await store.one(body.pin))[0]

    @app.post("/v1/verify/batch")
    async def verify_batch(body: VerifyBatchRequest) -> VerifyBatchAnswer:
        records = await store.many([item.pin for item in body.items])
        return VerifyBatchAnswer(
            results=[compare(item, records.get(item.pin))[0] for item in body.items]
        )

    @app.get("/readyz")
    async def ready() -> Response:
        return Response(status_code=200)

    return app


def create_app() -> FastAPI:
    """The app on PostgreSQL; its pool opens with the server (uvicorn's factory, so each
    worker has its own)."""
    sizes = ServeSettings()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        os.environ[DSN_VARIABLE],
        min_size=sizes.pool_min_size,
        max_size=sizes.pool_max_size,
        kwargs={"autocommit": True},
        open=False,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        try:
            yield
        finally:
            await pool.close()

    return build_app(PoolStore(pool), lifespan)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verify.baseline", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run(
        "bench.verify.baseline:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        **SERVER_OPTIONS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
