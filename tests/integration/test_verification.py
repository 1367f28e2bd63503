"""The verification service over real HTTP: `popsync serve` as a process, on the real
embedded PostgreSQL, called as partners call it."""

from __future__ import annotations

import io
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from popsync.dev.stack import EmbeddedStack, ServiceProcess, free_port, settings_env
from popsync.domain.pin import make_pin
from popsync.ops import partners
from popsync.ops.provision import migrate
from popsync.ops.publish import Publisher
from popsync.settings import Settings
from tests.builders import birth, move, publish
from tests.polling import Query, eventually

pytestmark = pytest.mark.integration

AUDIT_KEY = "integration-tests-audit-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]

_serials = itertools.count(500)


def new_pin(year: int = 1990, sex: str = "F", province: str = "079") -> str:
    return make_pin(province, "F" if sex == "F" else "M", year, next(_serials)).value


@dataclass(frozen=True)
class Citizen:
    pin: str
    name: str
    born: date
    sex: str = "F"
    life_status: str = "ALIVE"
    province: str = "79"
    commune: str = "26734"


ANH = Citizen(new_pin(2003), "Đặng Thị Ánh", date(2003, 4, 5))
BINH = Citizen(new_pin(1950, "M"), "Nguyễn Văn Bình", date(1950, 1, 2), "M", "DECEASED", "01")
CHI = Citizen(new_pin(1985), "Lê Thị Chi", date(1985, 6, 7))
MISSING = new_pin(1991)  # well formed, no citizen


def _insert(settings: Settings, citizens: list[Citizen]) -> None:
    with psycopg.connect(settings.postgres.dsn.get_secret_value(), autocommit=True) as conn:
        for c in citizens:
            conn.execute(
                "INSERT INTO citizens (pin, version, full_name, birth_date, sex, marital_status,"
                " life_status, permanent_province, permanent_commune, nationality, snapshot,"
                " last_event_id, last_event_at) VALUES (%s, 1, %s, %s, %s, 'SINGLE', %s, %s, %s,"
                " 'VN', '{}', 'seed', now()) ON CONFLICT (pin) DO NOTHING",
                (c.pin, c.name, c.born, c.sex, c.life_status, c.province, c.commune),
            )


def add_partner(settings: Settings, partner_id: str, *options: str, **policy: Any) -> str:
    """The partner's API key, from `partners add`'s output."""
    out, err = io.StringIO(), io.StringIO()
    request = partners.PolicyRequest(
        purposes=policy.pop("purposes", ["KYC"]),
        lookup_fields=policy.pop("lookup_fields", []),
        rate_per_second=policy.pop("rate", 1000.0),
        burst=policy.pop("burst", 1000),
        daily_quota=policy.pop("daily_quota", 1_000_000),
    )
    code = partners.add_partner(settings, partner_id, None, request, "tests", out=out, err=err)
    assert code == 0, err.getvalue()
    found = re.search(r"^api key: (psk_\S+)$", out.getvalue(), re.MULTILINE)
    assert found, out.getvalue()
    return found.group(1)


@dataclass
class Service:
    settings: Settings
    process: ServiceProcess
    http: httpx.Client
    bank: str  # verify and look up name, birth date, status
    verifier: str  # verify only

    def post(self, path: str, body: Any, key: str | None = None, **headers: str) -> httpx.Response:
        sent = {"Authorization": f"Bearer {key or self.bank}", "X-Purpose": "KYC", **headers}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(path, content=content, headers=sent)

    def get(self, path: str, key: str | None = None, **headers: str) -> httpx.Response:
        sent = {"Authorization": f"Bearer {key or self.bank}", "X-Purpose": "KYC", **headers}
        return self.http.get(path, headers=sent)

    def audit_rows(self, where: str = "TRUE", *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.postgres.dsn.get_secret_value()) as conn:
            query = f"SELECT partner_id, purpose, endpoint, pin_hash, result, status FROM access_audit WHERE {where} ORDER BY at"  # noqa: E501, S608
            return conn.execute(query.encode(), params).fetchall()


def service_settings(stack: EmbeddedStack, database: str, **serve: Any) -> Settings:
    defaults = {
        "audit_key": AUDIT_KEY,
        "partner_refresh_seconds": 0.3,
        "drain_seconds": 5,
        "max_questions_per_pin": 100_000,  # the tests ask about a few citizens many times
    }
    return stack.settings_for(database, serve={**defaults, **serve})


@pytest.fixture(scope="module")
def service(stack: EmbeddedStack) -> Iterator[Service]:
    settings = service_settings(stack, "verification")
    migrate(settings)
    _insert(settings, [ANH, BINH, CHI])
    bank = add_partner(settings, "bank-test", lookup_fields=["full_name,birth_date,life_status"])
    verifier = add_partner(settings, "verifier-test", purposes=["KYC", "STAFF_CHECK"])
    process = ServiceProcess(settings, stack.workdir / "logs" / "serve.log")
    try:
        process.wait_ready()
        with httpx.Client(base_url=process.base_url, timeout=10) as http:
            yield Service(settings, process, http, bank, verifier)
    finally:
        process.stop()
    assert process.process.returncode == 0, f"see {process.log_path}"


# ----------------------------------------------------------------------------- verify


def test_verify_matches_each_attribute_with_name_folding(service: Service) -> None:
    body = {
        "pin": ANH.pin,
        "full_name": "  dang   THI anh ",  # no marks, no đ, other case and spacing
        "birth_date": "2003-04-05",
        "sex": "F",
        "residence": {"province": "079", "commune": "26734"},  # a 3-digit code of the same
    }
    answer = service.post("/v1/verify", body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "attributes": {
            "full_name": "match",
            "birth_date": "match",
            "sex": "match",
            "residence": "match",
        },
        "alive": True,
    }


def test_verify_nfd_input_and_eth_fold_like_matching(service: Service) -> None:
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "Ðặng Thị Ánh")  # eth, as legacy encodings give
    answer = service.post("/v1/verify", {"pin": ANH.pin, "full_name": decomposed})
    assert answer.json()["attributes"] == {"full_name": "match"}


def test_verify_reports_each_mismatch_and_tells_alive_only_with_name_and_birth_date(
    service: Service,
) -> None:
    answer = service.post(
        "/v1/verify",
        {"pin": ANH.pin, "full_name": ANH.name, "birth_date": "2003-04-06", "sex": "M"},
    ).json()
    assert answer == {
        "attributes": {"full_name": "match", "birth_date": "no_match", "sex": "no_match"},
        "alive": None,
    }
    deceased = service.post(
        "/v1/verify", {"pin": BINH.pin, "full_name": BINH.name, "birth_date": "1950-01-02"}
    ).json()
    assert deceased["alive"] is False


def test_a_missing_pin_and_a_pin_that_matches_nothing_are_indistinguishable(
    service: Service,
) -> None:
    asked = {"full_name": "Trần Văn Không", "birth_date": "1991-02-03", "sex": "F"}
    missing = service.post("/v1/verify", {"pin": MISSING, **asked})
    existing = service.post("/v1/verify", {"pin": ANH.pin, **asked})
    assert missing.status_code == existing.status_code == 200
    assert missing.content == existing.content
    assert dict(missing.headers).keys() == dict(existing.headers).keys()

    # The audit tells them apart; the partner cannot.
    def last_two() -> list[str] | None:
        results = [row[4] for row in service.audit_rows("endpoint = 'verify'")[-2:]]
        return results if results == ["not_found", "no_match"] else None

    eventually(last_two, timeout=10)


def test_batch_answers_in_order(service: Service) -> None:
    items = [
        {"pin": BINH.pin, "full_name": BINH.name},
        {"pin": MISSING, "birth_date": "1991-01-01"},
        {"pin": ANH.pin, "full_name": "Dang Thi Anh", "birth_date": "2003-04-05"},
        {"pin": CHI.pin, "full_name": "Someone Else"},
    ]
    answer = service.post("/v1/verify/batch", {"items": items}, key=service.verifier)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == [
        {"attributes": {"full_name": "match"}, "alive": None},
        {"attributes": {"birth_date": "no_match"}, "alive": None},
        {"attributes": {"full_name": "match", "birth_date": "match"}, "alive": True},
        {"attributes": {"full_name": "no_match"}, "alive": None},
    ]


def test_batch_limits(service: Service) -> None:
    items = [{"pin": new_pin(), "birth_date": "1991-01-01"} for _ in range(1001)]
    full = service.post("/v1/verify/batch", {"items": items[:1000]})
    assert full.status_code == 200
    assert len(full.json()["results"]) == 1000
    over = service.post("/v1/verify/batch", {"items": items})
    assert over.status_code == 422
    assert over.json()["error"] == "batch_too_large"
    assert "at most 1000" in over.json()["message"]
    twice = service.post("/v1/verify/batch", {"items": [items[0], items[0]]})
    assert twice.status_code == 422
    assert "ask about the same PIN" in twice.json()["message"]
    empty = service.post("/v1/verify/batch", {"items": []})
    assert empty.status_code == 422
    assert empty.json()["message"].startswith("items:")


# ----------------------------------------------------------------------------- look-up


def test_lookup_returns_only_what_the_policy_allows(service: Service) -> None:
    answer = service.get(f"/v1/citizens/{ANH.pin}")
    assert answer.status_code == 200
    assert answer.json() == {
        "pin": ANH.pin,
        "full_name": ANH.name,
        "birth_date": "2003-04-05",
        "life_status": "ALIVE",
    }
    assert service.get(f"/v1/citizens/{MISSING}").status_code == 404


def test_a_policy_change_takes_effect_and_a_verifier_may_not_look_up(service: Service) -> None:
    refused = service.get(f"/v1/citizens/{ANH.pin}", key=service.verifier)
    assert refused.status_code == 403
    assert refused.json()["error"] == "lookup_not_permitted"
    # Same refusal for a PIN that does not exist: nothing learnt.
    assert service.get(f"/v1/citizens/{MISSING}", key=service.verifier).content == refused.content

    out, err = io.StringIO(), io.StringIO()
    more = partners.PolicyRequest(lookup_fields=["full_name", "permanent_residence"])
    assert partners.set_policy(service.settings, "verifier-test", more, "t", out=out, err=err) == 0

    def widened() -> dict[str, Any] | None:
        answer = service.get(f"/v1/citizens/{ANH.pin}", key=service.verifier)
        return answer.json() if answer.status_code == 200 else None

    assert eventually(widened, timeout=10) == {
        "pin": ANH.pin,
        "full_name": ANH.name,
        "permanent_residence": {"province": "79", "commune": "26734"},
    }
    less = partners.PolicyRequest(lookup_fields=[])
    assert partners.set_policy(service.settings, "verifier-test", less, "t", out=out, err=err) == 0
    eventually(
        lambda: service.get(f"/v1/citizens/{ANH.pin}", key=service.verifier).status_code == 403,
        timeout=10,
    )


def test_purpose_is_required_and_must_be_the_partners(service: Service) -> None:
    body = {"pin": ANH.pin, "full_name": ANH.name}
    missing = service.http.post(
        "/v1/verify", json=body, headers={"Authorization": f"Bearer {service.bank}"}
    )
    assert missing.status_code == 422
    assert missing.json()["error"] == "purpose_required"
    other = service.post("/v1/verify", body, **{"X-Purpose": "STAFF_CHECK"})
    assert other.status_code == 403
    assert "not among this partner's purposes (KYC)" in other.json()["message"]
    allowed = service.post("/v1/verify", body, key=service.verifier, **{"X-Purpose": "STAFF_CHECK"})
    assert allowed.status_code == 200


# ------------------------------------------------------------------------------- auth


def test_every_credential_failure_is_the_same_401(service: Service) -> None:
    key_id, secret = service.bank.removeprefix("psk_").split(".")
    revoked_partner_key = add_partner(service.settings, "revoked-partner")
    rotated = add_partner(service.settings, "rotated-partner")
    out, err = io.StringIO(), io.StringIO()
    assert partners.revoke_partner(service.settings, "revoked-partner", "t", out=out, err=err) == 0
    assert partners.new_key(service.settings, "rotated-partner", "t", out=out, err=err) == 0
    new_key = re.findall(r"^api key: (psk_\S+)$", out.getvalue(), re.MULTILINE)[-1]
    old_id = rotated.removeprefix("psk_").split(".")[0]
    assert (
        partners.revoke_key(service.settings, "rotated-partner", old_id, "t", out=out, err=err) == 0
    )

    body = {"pin": ANH.pin, "full_name": ANH.name}
    eventually(lambda: service.post("/v1/verify", body, key=new_key).status_code == 200, 10)
    eventually(lambda: service.post("/v1/verify", body, key=rotated).status_code == 401, 10)
    eventually(
        lambda: service.post("/v1/verify", body, key=revoked_partner_key).status_code == 401, 10
    )
    credentials = {
        "none": None,
        "basic scheme": f"Basic {service.bank}",
        "malformed": "Bearer not-a-key",
        "unknown key id": f"Bearer psk_{'0' * 12}.{secret}",
        "wrong secret": f"Bearer psk_{key_id}.{'A' * 43}",
        "revoked key": f"Bearer {rotated}",
        "revoked partner": f"Bearer {revoked_partner_key}",
    }
    answers = {}
    for name, header in credentials.items():
        headers = {"X-Purpose": "KYC"} | ({"Authorization": header} if header else {})
        answers[name] = service.http.post("/v1/verify", json=body, headers=headers)
    assert {a.status_code for a in answers.values()} == {401}
    assert len({a.content for a in answers.values()}) == 1
    assert {a.headers["www-authenticate"] for a in answers.values()} == {'Bearer realm="popsync"'}
    # Refused requests are audited too, without a partner.
    assert service.audit_rows("status = 401 AND partner_id IS NULL")


# ------------------------------------------------------------------------------ limits


def test_rate_limit_answers_429_with_retry_after(service: Service) -> None:
    key = add_partner(service.settings, "slow-partner", rate=0.2, burst=2)
    body = {"pin": ANH.pin, "full_name": ANH.name}
    eventually(lambda: service.post("/v1/verify", body, key=key).status_code != 401, 10)
    codes = [service.post("/v1/verify", body, key=key) for _ in range(3)]
    limited = [c for c in codes if c.status_code == 429]
    assert limited, [c.status_code for c in codes]
    assert limited[0].json()["error"] == "rate_limited"
    assert 1 <= int(limited[0].headers["retry-after"]) <= 5
    metrics = service.http.get("/metrics").text
    assert 'popsync_partner_rejections_total{kind="rate_limit",partner="slow-partner"}' in metrics


def test_daily_quota_counts_items_and_answers_429_until_tomorrow(service: Service) -> None:
    key = add_partner(service.settings, "small-quota", daily_quota=5)
    item = {"pin": ANH.pin, "full_name": ANH.name}
    eventually(lambda: service.post("/v1/verify", item, key=key).status_code == 200, 10)  # 1
    three = [{"pin": new_pin(), "full_name": ANH.name} for _ in range(3)]
    assert service.post("/v1/verify/batch", {"items": three}, key=key).status_code == 200
    two = [{"pin": new_pin(), "full_name": ANH.name} for _ in range(2)]
    over = service.post("/v1/verify/batch", {"items": two}, key=key)  # 4 + 2 > 5
    assert over.status_code == 429
    assert over.json()["error"] == "daily_quota_exhausted"
    assert 0 < int(over.headers["retry-after"]) <= 86_400
    assert service.post("/v1/verify", item, key=key).status_code == 200  # the 5th
    assert service.post("/v1/verify", item, key=key).status_code == 429
    with psycopg.connect(service.settings.postgres.dsn.get_secret_value()) as conn:
        used = conn.execute(
            "SELECT used FROM partner_usage WHERE partner_id = 'small-quota'"
        ).fetchone()
    assert used == (5,)


# -------------------------------------------------------------------- hostile bodies


HOSTILE_BODIES: dict[str, bytes] = {
    "not json": b"pin=079203000123",
    "binary": bytes(range(256)) * 4,
    "invalid utf-8": b'{"pin": "\xff\xfe"}',
    "truncated": b'{"pin": "0792030',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "nested object": b'{"pin":' * 5_000 + b"1" + b"}" * 5_000,
    "wrong types": b'{"pin": 79203000123, "full_name": ["a"], "birth_date": true}',
    "bad pin": b'{"pin": "99920300012x", "full_name": "A"}',
    "bad date": b'{"pin": "079203000123", "birth_date": "2003-02-30"}',
    "unknown field": b'{"pin": "079203000123", "full_name": "A", "mother": "B"}',
    "no attribute": b'{"pin": "079203000123"}',
    "bad province": b'{"pin": "079203000123", "full_name": "A", "residence": {"province": "99"}}',
    "huge name": json.dumps({"pin": "079203000123", "full_name": "a" * 100_000}).encode(),
    "null": b"null",
    "array": b"[]",
    "empty": b"",
    "nul bytes": b'{"pin": "079203000123\\u0000", "full_name": "A"}',
}


@pytest.mark.parametrize("name", HOSTILE_BODIES)
@pytest.mark.parametrize("path", ["/v1/verify", "/v1/verify/batch"])
def test_a_malformed_body_is_a_clear_422_never_a_500(
    service: Service, name: str, path: str
) -> None:
    body = HOSTILE_BODIES[name]
    answer = service.post(path, body)
    if path == "/v1/verify" and len(body) > 16_384:  # a single verification is small
        assert answer.status_code == 413, answer.text
        return
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["error"] in {"invalid_request", "batch_too_large"}
    assert error["message"] and len(error["message"]) < 300
    assert "Traceback" not in answer.text


def test_an_oversized_body_is_refused_with_413(service: Service) -> None:
    too_big = b'{"items": [' + b'{"pin": "079203000123", "full_name": "A"},' * 30_000 + b"]}"
    answer = service.post("/v1/verify/batch", too_big)
    assert answer.status_code == 413
    assert answer.json()["error"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(40):
            yield b" " * 65_536

    streamed = service.http.post(
        "/v1/verify",
        content=chunks(),
        headers={"Authorization": f"Bearer {service.bank}", "X-Purpose": "KYC"},
    )
    assert streamed.status_code == 413


def test_a_bad_pin_in_the_path_is_a_422(service: Service) -> None:
    for pin in ("123", "0792030001234", "abcdefghijkl", "%00" * 4, "999203000123"):
        answer = service.get(f"/v1/citizens/{pin}")
        assert answer.status_code in (404, 422), (pin, answer.status_code)
        assert answer.status_code != 500


def test_a_burst_of_concurrent_requests_is_answered(service: Service) -> None:
    key = add_partner(service.settings, "burst-partner", rate=10_000, burst=10_000)
    eventually(
        lambda: (
            service.post("/v1/verify", {"pin": MISSING, "full_name": "A"}, key=key).status_code
            == 200
        ),
        10,
    )  # noqa: E501
    codes: list[int] = []

    def hammer() -> None:
        with httpx.Client(base_url=service.process.base_url, timeout=30) as http:
            for _ in range(50):
                answer = http.post(
                    "/v1/verify",
                    json={"pin": ANH.pin, "full_name": ANH.name},
                    headers={"Authorization": f"Bearer {key}", "X-Purpose": "KYC"},
                )
                codes.append(answer.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(codes) == 400
    assert set(codes) <= {200, 503}  # 503: admission control, never a 500
    assert codes.count(200) >= 300


# ------------------------------------------------------------------ audit and privacy


def test_each_question_leaves_an_audit_row_with_a_keyed_hash_and_the_audit_is_append_only(
    service: Service,
) -> None:
    import hashlib
    import hmac

    items = [{"pin": ANH.pin, "full_name": "X"}, {"pin": BINH.pin, "full_name": BINH.name}]
    assert service.post("/v1/verify/batch", {"items": items}).status_code == 200
    anh_hash = hmac.new(AUDIT_KEY.encode(), ANH.pin.encode(), hashlib.sha256).digest()

    def rows() -> list[tuple[Any, ...]]:
        where = "pin_hash = %s AND endpoint = 'verify_batch' AND partner_id = 'bank-test'"
        return service.audit_rows(where, anh_hash)

    found = eventually(rows, timeout=10)
    assert found[-1][:3] == ("bank-test", "KYC", "verify_batch")
    with psycopg.connect(service.settings.postgres.dsn.get_secret_value()) as conn:
        dump = conn.execute(
            "SELECT string_agg(access_audit::text, ' ') FROM access_audit"
        ).fetchone()
        assert ANH.pin not in str(dump) and ANH.name not in str(dump)
        for statement in ("UPDATE access_audit SET result = 'x'", "DELETE FROM access_audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement.encode())
            conn.rollback()

    shown = subprocess.run(
        [sys.executable, "-m", "popsync.cli", "audit", "citizen", ANH.pin],
        env={**settings_env(service.settings), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"citizen {ANH.pin[:3]}******{ANH.pin[-3:]}:" in shown.stdout
    assert "bank-test  purpose KYC  verify_batch  no_match  HTTP 200" in shown.stdout
    assert ANH.pin not in shown.stdout


def test_no_pin_or_name_in_the_log_or_the_metrics(service: Service) -> None:
    service.get(f"/v1/citizens/{ANH.pin}")
    service.post("/v1/verify", {"pin": ANH.pin, "full_name": ANH.name, "x": 1})
    metrics = service.http.get("/metrics").text
    log = service.process.log_path.read_text(errors="replace")
    for secret in (ANH.pin, BINH.pin, MISSING, ANH.name, BINH.name, "Dang", service.bank):
        assert secret not in metrics
        assert secret not in log
    labels = set(re.findall(r'endpoint="([^"]*)"', metrics))
    assert labels <= {"verify", "verify_batch", "citizen", "healthz", "readyz", "metrics", "other"}


def test_the_served_openapi_document_is_the_one_in_docs(service: Service) -> None:
    served = service.http.get("/openapi.json").json()
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert set(served["paths"]) == {"/v1/verify", "/v1/verify/batch", "/v1/citizens/{pin}"}


# ----------------------------------------------------------------- operations


def test_healthz_readyz_and_metrics(service: Service) -> None:
    assert service.http.get("/healthz").status_code == 200
    assert service.http.get("/readyz").text == "ready\n"
    metrics = service.http.get("/metrics").text
    for name in (
        "popsync_http_requests_total",
        "popsync_http_request_duration_seconds_bucket",
        "popsync_verify_items_total",
        "popsync_db_pool_size",
        "popsync_db_pool_in_use",
        "popsync_audit_backlog",
    ):
        assert name in metrics


def test_sigterm_drains_requests_in_progress_and_writes_the_audit(stack: EmbeddedStack) -> None:
    settings = service_settings(stack, "verification_drain", drain_seconds=10)
    migrate(settings)
    _insert(settings, [ANH])
    key = add_partner(settings, "drain-partner")
    process = ServiceProcess(settings, stack.workdir / "logs" / "serve-drain.log")
    process.wait_ready()
    codes: list[int] = []
    body = {"items": [{"pin": new_pin(), "full_name": ANH.name} for _ in range(1000)]}

    def ask() -> None:
        with httpx.Client(base_url=process.base_url, timeout=30) as http:
            for _ in range(5):
                try:
                    answer = http.post(
                        "/v1/verify/batch",
                        json=body,
                        headers={"Authorization": f"Bearer {key}", "X-Purpose": "KYC"},
                    )
                except httpx.TransportError:
                    return  # the server closed: no request was cut half-way (checked below)
                codes.append(answer.status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    process.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert process.process.wait(30) == 0
    process.stop()
    assert codes and set(codes) == {200}
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        audited = conn.execute("SELECT count(*) FROM access_audit WHERE status = 200").fetchone()
    assert audited == (1000 * len(codes),)  # every answered item audited before exit
    assert "draining" in process.log_path.read_text()


def test_serve_fails_in_one_line(stack: EmbeddedStack, tmp_path: Path) -> None:
    settings = service_settings(stack, "verification")
    env = settings_env(settings)

    def serve(**overrides: str) -> subprocess.CompletedProcess[str]:
        run_env = {**env, **overrides, "PATH": "/usr/bin:/bin"}
        run_env = {k: v for k, v in run_env.items() if v}
        return subprocess.run(
            [sys.executable, "-m", "popsync.cli", "serve"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    no_key = serve(POPSYNC_SERVE__AUDIT_KEY="")
    assert no_key.returncode == 2
    assert no_key.stderr.startswith("popsync: POPSYNC_SERVE__AUDIT_KEY: not set")
    assert len(no_key.stderr.strip().splitlines()) == 1
    with __import__("socket").create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        busy = serve(POPSYNC_SERVE__PORT=port)
    assert busy.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    nowhere = serve(
        POPSYNC_POSTGRES__DSN=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        POPSYNC_POSTGRES__CONNECT_TIMEOUT_SECONDS="2",
    )
    assert nowhere.returncode == 3
    assert "cannot reach PostgreSQL" in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1


# -------------------------------------------------------- what the synchronizer wrote


def test_the_service_answers_the_state_the_synchronizer_wrote(
    stack: EmbeddedStack, pipeline: Settings, publisher: Publisher, query: Query
) -> None:
    pin = new_pin(1990)
    publish(publisher, birth(pin, "đoàn  thị HẠNH"), move(pin, date(2021, 3, 1), "74", "25747"))
    eventually(lambda: query("SELECT version FROM citizens WHERE pin = %s", pin) == [(2,)])
    serve = pipeline.serve.model_copy(
        update={"audit_key": AUDIT_KEY, "partner_refresh_seconds": 0.3}
    )
    settings = pipeline.model_copy(update={"serve": serve})
    every_field = [",".join(partners.LOOKUP_FIELDS)]
    key = add_partner(settings, "registry-office", lookup_fields=every_field)
    process = ServiceProcess(settings, stack.workdir / "logs" / "serve-pipeline.log")
    try:
        process.wait_ready()
        with httpx.Client(base_url=process.base_url, timeout=10) as http:
            headers = {"Authorization": f"Bearer {key}", "X-Purpose": "KYC"}
            shown = http.get(f"/v1/citizens/{pin}", headers=headers).json()
            verified = http.post(
                "/v1/verify",
                json={
                    "pin": pin,
                    "full_name": "Doan Thi Hanh",
                    "birth_date": "1990-04-05",
                    "residence": {"province": "74", "commune": "25747"},  # legacy Bình Dương
                },
                headers=headers,
            ).json()
    finally:
        process.stop()
    (row,) = query(
        "SELECT full_name, birth_date::text, sex, life_status, marital_status,"
        " permanent_province, permanent_commune, birthplace_province FROM citizens"
        " WHERE pin = %s",
        pin,
    )
    assert shown["full_name"] == row[0] == "Đoàn Thị Hạnh"
    assert (shown["birth_date"], shown["sex"], shown["life_status"]) == row[1:4]
    assert shown["marital_status"] == row[4]
    assert shown["permanent_residence"] == {"province": row[5], "commune": row[6]}
    assert shown["birthplace_province"] == row[7]
    assert verified == {
        "attributes": {"full_name": "match", "birth_date": "match", "residence": "match"},
        "alive": True,
    }
