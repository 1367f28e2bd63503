"""The verification service's wiring: settings → pool, directory, limits, audit → a FastAPI
app on uvicorn (`popsync serve`).

One process per pod (scale with pods): rate limits and the audit writer live in the
process, daily quotas in PostgreSQL. Bodies are read raw and validated by pydantic's Rust
JSON parser (`model_validate_json`): it is faster than FastAPI's json.loads path and
refuses hostile nesting with a 422 instead of a 400. Admission control answers 503 at
once past `max_in_flight` requests, so overload shows as fast refusals, not as a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from psycopg_pool import AsyncConnectionPool

from popsync.adapters.postgres import partners as tables
from popsync.adapters.postgres.database import dsn_address, require_database
from popsync.ops.failures import UsageError
from popsync.runtime import metrics
from popsync.runtime.collector import tune_garbage_collector
from popsync.settings import ServeSettings, Settings
from popsync.verification.audit import MIN_KEY_CHARS, AuditTrail
from popsync.verification.comparison import CitizenRecord
from popsync.verification.limits import QuotaLedger, RepeatGuard
from popsync.verification.models import (
    CitizenView,
    ErrorBody,
    VerifyAnswer,
    VerifyBatchAnswer,
    VerifyBatchRequest,
    VerifyRequest,
)
from popsync.verification.partners import PartnerDirectory, bearer_credential

from .service import JSON, Refused, Reply, Store, VerificationService, error_body, refresh_forever

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READY_CHECK_SECONDS = 1.0  # /readyz asks PostgreSQL itself only after this long unanswered
# A directory not re-read for 3 refresh intervals (+5 s) is stale: /readyz fails and
# requests are refused (503), since it may still hold a revoked key.
STALE_DIRECTORY_FACTOR = 3


def audit_key(settings: ServeSettings) -> bytes:
    """The audit key; UsageError (one line, never the value) if unset or too short."""
    if settings.audit_key is None:
        raise UsageError(
            "POPSYNC_SERVE__AUDIT_KEY: not set; the access audit keys each PIN's hash with "
            f"it (a secret of at least {MIN_KEY_CHARS} characters, the same for every "
            "process and kept across restarts)"
        )
    key = settings.audit_key.get_secret_value()
    if len(key) < MIN_KEY_CHARS:
        raise UsageError(
            f"POPSYNC_SERVE__AUDIT_KEY: {len(key)} characters; at least {MIN_KEY_CHARS} needed"
        )
    return key.encode()


def endpoint_of(path: str) -> str:
    """A bounded metric label for a path (never the path: it may hold a PIN)."""
    if path == "/v1/verify":
        return "verify"
    if path == "/v1/verify/batch":
        return "verify_batch"
    if path.startswith("/v1/citizens/"):
        return "citizen"
    return {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}.get(path, "other")


class Front:
    """The ASGI app uvicorn runs. The three partner routes go straight to the service:
    no router, no Request object, no middleware stack, which cost about a third of a
    request's CPU here (bench/README.md, "Verification service"). Everything else (probes,
    /metrics, /openapi.json, wrong methods, unknown paths) goes to the FastAPI app, whose
    routes also declare the partner API for the OpenAPI document. Both get admission
    control for /v1 and the count and latency of every route."""

    def __init__(self, api: FastAPI, service: VerificationService, serve: ServeSettings) -> None:
        self.api = api
        self.service = service
        self.max_in_flight = serve.max_in_flight
        self.max_body_bytes = serve.max_body_bytes
        self.body_timeout = serve.body_timeout_seconds
        self.in_flight = 0

    def openapi(self) -> dict[str, Any]:
        return self.api.openapi()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the API's
            await self.api(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        endpoint = endpoint_of(path)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if not path.startswith("/v1/"):
            await self.api(scope, receive, send_status)
        elif self.in_flight >= self.max_in_flight:
            metrics.HTTP_ADMISSION_REJECTIONS.inc()
            await _send_reply(send_status, _OVERLOADED)
        else:
            self.in_flight += 1
            metrics.HTTP_IN_FLIGHT.set(self.in_flight)
            try:
                reply = await self.partner_call(endpoint, scope, receive)
                if reply is None:
                    await self.api(scope, receive, send_status)
                else:
                    await _send_reply(send_status, reply)
            finally:
                self.in_flight -= 1
                metrics.HTTP_IN_FLIGHT.set(self.in_flight)
        self._counted(endpoint, status).inc()
        self._timed(endpoint).observe(time.perf_counter() - started)

    async def partner_call(self, endpoint: str, scope: Scope, receive: Receive) -> Reply | None:
        """The reply of a partner route; None for what the API answers (405, 404)."""
        method = scope["method"]
        if not (method == "POST" and endpoint in ("verify", "verify_batch")) and not (
            method == "GET" and endpoint == "citizen"
        ):
            return None
        headers = dict(scope["headers"])
        credential = bearer_credential(_text(headers.get(b"authorization")))
        purpose = _text(headers.get(b"x-purpose"))
        try:
            if endpoint == "citizen":
                pin = scope["path"].removeprefix("/v1/citizens/")
                return await self.service.look_up(credential, purpose, pin)
            limit = self.max_body_bytes
            if endpoint == "verify":
                limit = min(limit, _ONE_BODY_BYTES)

            async def body() -> bytes:
                # Read by the service only once the key, the rate and the purpose passed: no
                # one else holds an admission slot while a body trickles in.
                try:
                    async with asyncio.timeout(self.body_timeout):
                        return await _body(receive, headers.get(b"content-length"), limit)
                except TimeoutError:
                    late = f"body not received in {self.body_timeout:g} s"
                    raise Refused(408, "body_timeout", late, "invalid") from None

            if endpoint == "verify":
                return await self.service.verify(credential, purpose, body)
            return await self.service.verify_batch(credential, purpose, body)
        except Refused as refused:
            return refused.reply()
        except Exception as exc:  # a bug: one 500 for this request, never the process
            log.error("internal error on %s (%s)", endpoint, type(exc).__name__)
            return _INTERNAL

    # A metric's labels() costs a lock and a dict lookup each time: the children are kept
    # (endpoints and status codes are few, so these stay small).
    @functools.cache  # noqa: B019 - one Front per process, for its lifetime
    def _counted(self, endpoint: str, status: int) -> Counter:
        return metrics.HTTP_REQUESTS.labels(endpoint, str(status))

    @functools.cache  # noqa: B019
    def _timed(self, endpoint: str) -> Histogram:
        return metrics.HTTP_SECONDS.labels(endpoint)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request's body, refused with 413 past `limit` bytes (declared or streamed)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise Refused(400, "disconnected", "the request was not received whole", "invalid")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# A single verification's body is a few hundred bytes; only batches need more.
_ONE_BODY_BYTES = 16_384

_INTERNAL = Reply(500, error_body("internal", "internal error; the operators are told"))
_OVERLOADED = Reply(
    503,
    error_body("overloaded", "too many requests in progress; retry shortly"),
    {"Retry-After": "1"},
)


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(reply.body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def _response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, reply.headers, media_type=JSON)


def _too_large(limit: int) -> Refused:
    return Refused(413, "body_too_large", f"request body over {limit} bytes", "invalid")


@dataclass
class Health:
    """What /healthz and /readyz answer from."""

    draining: bool = False
    directory_loaded: bool = False
    database_answered: float = -math.inf  # monotonic time of PostgreSQL's last answer


def _pool_store(pool: AsyncConnectionPool[Any], health: Health) -> Store:
    """Reads on the pool; each that succeeds tells /readyz that PostgreSQL answers."""

    async def read(pin: str) -> CitizenRecord | None:
        async with pool.connection() as conn:
            record = await tables.read_citizen(conn, pin)
        health.database_answered = time.monotonic()
        return record

    async def read_many(pins: Sequence[str]) -> dict[str, CitizenRecord]:
        async with pool.connection() as conn:
            records = await tables.read_citizens(conn, pins)
        health.database_answered = time.monotonic()
        return records

    return Store(read, read_many)


def _update_pool_gauges(pool: AsyncConnectionPool[Any]) -> None:
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    metrics.DB_POOL_SIZE.set(size)
    metrics.DB_POOL_IN_USE.set(size - stats.get("pool_available", 0))
    metrics.DB_POOL_WAITING.set(stats.get("requests_waiting", 0))


def create_app(settings: Settings, health: Health | None = None) -> Front:
    """The ASGI app; the pool opens and the directory loads in its lifespan."""
    serve = settings.serve
    key = audit_key(serve)
    health = health or Health()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.postgres.dsn.get_secret_value(),
        min_size=serve.pool_min_size,
        max_size=max(serve.pool_max_size, serve.pool_min_size),
        timeout=serve.pool_timeout_seconds,
        kwargs={"autocommit": True, "application_name": "popsync-serve"},
        open=False,
        name="popsync-serve",
    )

    async def lease(partner_id: str, day: Any, want: int, quota: int) -> int:
        async with pool.connection() as conn:
            return await tables.lease_quota(conn, partner_id, day, want, quota)

    async def append(rows: Sequence[tables.AuditRow]) -> None:
        async with pool.connection() as conn:
            await tables.append_audit(conn, rows)

    async def load() -> PartnerDirectory:
        async with pool.connection() as conn:
            return await tables.load_directory(conn)

    audit = AuditTrail(append, serve.audit_flush_seconds, serve.audit_max_backlog)
    service = VerificationService(
        _pool_store(pool, health),
        audit,
        QuotaLedger(lease, serve.quota_lease),
        key,
        serve.batch_max_items,
        RepeatGuard(serve.max_questions_per_pin),
        directory_max_age=serve.partner_refresh_seconds * STALE_DIRECTORY_FACTOR + 5,
    )

    def directory_loaded() -> None:
        health.directory_loaded = True
        _update_pool_gauges(pool)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=False)
        audit.start()
        refresher = asyncio.create_task(
            refresh_forever(service, load, serve.partner_refresh_seconds, directory_loaded)
        )
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await audit.close(timeout=max(serve.drain_seconds, 1.0))
            await pool.close()

    app = FastAPI(
        title="popsync verification service",
        version="1",
        summary="Verify and look up citizens in the central population store, by policy.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    front: Front  # made below, around the app: the partner routes are its

    async def partner_call(request: Request) -> Response:
        """What the front answers (the routes below declare the API; the front takes these
        requests before they reach them)."""
        endpoint = endpoint_of(request.scope["path"])
        reply = await front.partner_call(endpoint, request.scope, request.receive)
        return _response(reply or _INTERNAL)

    @app.post(
        "/v1/verify",
        response_model=VerifyAnswer,
        responses=_ERRORS,
        openapi_extra=_body_schema("VerifyRequest"),
        summary="Verify what a partner believes about the citizen with a PIN",
    )
    async def verify(request: Request) -> Response:
        return await partner_call(request)

    @app.post(
        "/v1/verify/batch",
        response_model=VerifyBatchAnswer,
        responses=_ERRORS,
        openapi_extra=_body_schema("VerifyBatchRequest"),
        summary=f"Verify up to {serve.batch_max_items} items; answers in the items' order",
    )
    async def verify_batch(request: Request) -> Response:
        return await partner_call(request)

    @app.get(
        "/v1/citizens/{pin}",
        response_model=CitizenView,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No citizen"}},
        summary="The citizen, with only the fields the partner's policy allows",
    )
    async def citizen(pin: str, request: Request) -> Response:
        return await partner_call(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b"ok\n", media_type="text/plain")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        reason = await _not_ready(health, pool, service)
        if reason:
            return Response(f"not ready: {reason}\n".encode(), 503, media_type="text/plain")
        return Response(b"ready\n", media_type="text/plain")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        _update_pool_gauges(pool)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.state.service = service
    app.state.health = health
    front = Front(app, service, serve)
    return front


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
    403: {"model": ErrorBody, "description": "Purpose or look-up not permitted"},
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    422: {"model": ErrorBody, "description": "Malformed JSON, wrong types, bad PIN"},
    429: {"model": ErrorBody, "description": "Rate limit or daily quota; see Retry-After"},
    503: {"model": ErrorBody, "description": "Overloaded or not ready; see Retry-After"},
}


def _body_schema(model: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the request bodies' schemas (read raw, see the module's
    docstring) and the two headers every /v1 call carries."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (VerifyRequest, VerifyBatchRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    document["components"]["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "psk_<key id>.<secret>"}
    }
    document["security"] = [{"apiKey": []}]
    purpose = {
        "name": "X-Purpose",
        "in": "header",
        "required": True,
        "description": "Why the partner asks: one of the purpose codes of its policy",
        "schema": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{1,31}$"},
    }
    for path in document["paths"].values():
        for operation in path.values():
            operation.setdefault("parameters", []).append(purpose)
    app.openapi_schema = document
    return document


async def _not_ready(
    health: Health, pool: AsyncConnectionPool[Any], service: VerificationService
) -> str:
    if health.draining:
        return "draining"
    if not health.directory_loaded:
        return "partner directory not loaded"
    if time.monotonic() - service.directory_at > service.directory_max_age:
        return "partner directory not re-read lately"
    if not service.audit.healthy:
        return "access audit not being written"
    if time.monotonic() - health.database_answered <= READY_CHECK_SECONDS:
        return ""  # reads are being answered: no probe query queued behind them
    try:
        async with pool.connection(timeout=1.0) as conn:
            await conn.execute("SELECT 1")
    except Exception:  # any failure: not ready; the reason is for people
        return "PostgreSQL not reachable"
    health.database_answered = time.monotonic()
    return ""


# ------------------------------------------------------------------------------ running


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, /readyz fails at once; uvicorn then stops accepting and lets
    requests in progress finish within `timeout_graceful_shutdown`."""

    def __init__(self, config: uvicorn.Config, health: Health) -> None:
        super().__init__(config)
        self._health = health

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._health.draining:
            log.info("%s: draining", signal.Signals(sig).name)
        self._health.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn raises a caught signal again once it has shut down, so the process
            # would die of SIGTERM after draining; a drained stop is a clean exit (0).
            self._captured_signals.remove(sig)


def require_port(host: str, port: int) -> None:
    """UsageError (one line) if the address cannot be listened on, before uvicorn (which
    would log a traceback-like error and exit) tries."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}): set POPSYNC_SERVE__PORT "
            "or POPSYNC_SERVE__BIND_HOST"
        ) from None


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain."""
    health = Health()
    app = create_app(settings, health)
    require_database(settings.postgres)
    require_port(settings.serve.bind_host, settings.serve.port)
    config = uvicorn.Config(
        app,
        host=settings.serve.bind_host,
        port=settings.serve.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # a path may hold a PIN; the metrics count requests instead
        server_header=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(1, int(settings.serve.drain_seconds)),
    )
    server = _DrainingServer(config, health)
    # As in the workers: a request allocates thousands of short-lived objects (a batch,
    # hundreds of thousands); the default collector rescans the long-lived ones every 700
    # allocations (in-process, a batch of 1,000 took 18.1 ms of CPU with it, 12.4 without).
    tune_garbage_collector(settings.processing.gc_first_threshold)
    log.info(
        "popsync serve: http://%s:%d (PostgreSQL %s)",
        settings.serve.bind_host,
        settings.serve.port,
        dsn_address(settings.postgres.dsn.get_secret_value()),
    )
    server.run()
    return 0 if server.started else 1
