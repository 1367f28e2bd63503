"""The front of the verification service, called as uvicorn calls it (raw ASGI)."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

from popsync.services.verification.app import Front, create_app, endpoint_of
from popsync.services.verification.service import Body, Reply, _read

from popsync.settings import Settings
from popsync.verification.partners import Partner, PartnerDirectory, Policy, issue_key


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *(headers or [])],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


def call(front: Front, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
    sent: list[dict[str, Any]] = []
    chunks = [body]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop() if chunks else b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    asyncio.run(front(_scope(method, path, raw), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


KEY = issue_key("bank-a")
BEARER = f"Bearer {KEY.credential}"


def front() -> Front:
    """The front of an app whose directory knows partner bank-a (key KEY)."""
    app = create_app(Settings(serve={"audit_key": "k" * 32, "max_body_bytes": 2048}))
    policy = Policy(frozenset({"KYC"}), frozenset(), 100.0, 100, 1000)
    partner = Partner("bank-a", "Bank A", policy, datetime.datetime.now(datetime.UTC))
    app.service.directory = PartnerDirectory([partner], [KEY.key])
    return app


def test_partner_routes_are_the_services_and_the_rest_the_apis() -> None:
    app = front()
    calls: list[tuple[str, str | None, bytes]] = []

    async def verify(credential: str, purpose: str | None, body: Body) -> Reply:
        calls.append((credential, purpose, await _read(body)))
        return Reply(200, b'{"ok":1}')

    app.service.verify = verify  # type: ignore[method-assign]
    status, body = call(app, "POST", "/v1/verify", b"{}", authorization=BEARER, x_purpose="KYC")
    assert (status, body) == (200, b'{"ok":1}')
    assert calls == [(KEY.credential, "KYC", b"{}")]
    assert call(app, "GET", "/v1/verify")[0] == 405  # FastAPI's answer
    assert call(app, "POST", "/v1/nothing")[0] == 404
    assert call(app, "GET", "/healthz") == (200, b"ok\n")


def test_a_bug_in_a_request_is_one_500_without_detail_and_the_front_goes_on() -> None:
    app = front()

    async def broken(credential: str, purpose: str | None, body: Body) -> Reply:
        raise KeyError("079203000123")  # never shown: it could be a PIN

    app.service.verify_batch = broken  # type: ignore[method-assign]
    status, body = call(app, "POST", "/v1/verify/batch", b"{}", authorization=BEARER)
    assert status == 500
    assert json.loads(body)["error"] == "internal"
    assert b"0792" not in body
    assert app.in_flight == 0
    assert call(app, "GET", "/healthz")[0] == 200


def test_a_body_over_the_limit_is_413_before_the_service_sees_it() -> None:
    app = front()
    status, body = call(
        app, "POST", "/v1/verify", b"x" * 4096, authorization=BEARER, x_purpose="KYC"
    )
    assert status == 413
    assert json.loads(body)["error"] == "body_too_large"


def test_over_max_in_flight_a_request_is_refused_503_at_once() -> None:
    app = front()
    app.in_flight = app.max_in_flight
    status, body = call(app, "POST", "/v1/verify", b"{}")
    assert status == 503
    assert json.loads(body)["error"] == "overloaded"


def test_metric_labels_are_route_names_never_paths() -> None:
    assert endpoint_of("/v1/citizens/079203000123") == "citizen"
    assert endpoint_of("/v1/verify") == "verify"
    assert endpoint_of("/anything/079203000123") == "other"


def test_without_a_key_in_force_the_body_is_never_read() -> None:
    """A 401 comes before the body: no one without a key holds a slot while it trickles."""
    app = front()
    received: list[object] = []

    async def receive() -> dict[str, Any]:
        received.append("read")
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = _scope("POST", "/v1/verify", [(b"authorization", b"Bearer psk_x")])
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401
    assert received == []
