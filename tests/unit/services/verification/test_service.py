"""The verification service's steps, without HTTP or PostgreSQL: each refusal's status, error
code and Retry-After; the audit rows of every request, answered or refused (one per batch
item, with the keyed hash of its PIN and never the PIN); metrics with bounded labels."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from popsync.services.verification.service import (
    Refused,
    Reply,
    Store,
    VerificationService,
    error_body,
    invalid_body,
    refresh_forever,
)
from prometheus_client import REGISTRY
from pydantic import ValidationError

from popsync.adapters.postgres.partners import AuditRow
from popsync.verification.audit import AuditTrail, pin_hash
from popsync.verification.comparison import CitizenRecord, ResultClass, compare
from popsync.verification.limits import (
    QuotaLedger,
    RateLimiter,
    RepeatGuard,
    quota_day,
    seconds_to_next_day,
)
from popsync.verification.models import LookupField, VerifyRequest
from popsync.verification.partners import (
    Partner,
    PartnerDirectory,
    Policy,
    issue_key,
)

AUDIT_KEY = b"audit-key-of-the-unit-tests-0123456789"
T0 = datetime.datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
PIN = "079090000123"  # exists, matches
OTHER = "001300000001"  # exists, a different citizen
ABSENT = "074090000999"  # no citizen
NAME = "Đặng Thị Ánh"
BIRTH = datetime.date(1990, 5, 17)

CITIZEN = CitizenRecord(
    pin=PIN,
    full_name=NAME,
    birth_date=BIRTH,
    sex="F",
    life_status="ALIVE",
    death_date=None,
    nationality="VN",
    ethnicity="KINH",
    birthplace_province="79",
    marital_status="SINGLE",
    permanent_province="79",
    permanent_commune="26734",
    temporary_province=None,
    temporary_commune=None,
    id_card_number="079190000123",
)
SOMEONE_ELSE = dataclasses.replace(
    CITIZEN,
    pin=OTHER,
    full_name="Lê Văn Tám",
    birth_date=datetime.date(2000, 1, 1),
    sex="M",
    life_status="DECEASED",
    death_date=datetime.date(2024, 1, 2),
)

BANK = Partner(
    "bank-a",
    "Bank A",
    Policy(frozenset({"KYC", "AML"}), frozenset(), rate_per_second=10.0, burst=5, daily_quota=1000),
    T0,
)
MINISTRY = Partner(
    "ministry-b",
    "Ministry B",
    Policy(
        frozenset({"SOCIAL_INSURANCE"}),
        frozenset(
            {LookupField.FULL_NAME, LookupField.LIFE_STATUS, LookupField.PERMANENT_RESIDENCE}
        ),
        rate_per_second=10.0,
        burst=5,
        daily_quota=1000,
    ),
    T0,
)
GONE = Partner("gone-c", "Gone C", BANK.policy, T0, revoked_at=T0)
PARTNER_IDS = {"bank-a", "ministry-b", "gone-c"}
PINS = {PIN, OTHER, ABSENT, "999090000123", "079690000123"}  # every PIN the tests send

MATCHING = json.dumps(
    {"pin": PIN, "full_name": "dang thi anh", "birth_date": "1990-05-17"}
).encode()


def body(pin: str = PIN, **fields: object) -> bytes:
    return json.dumps({"pin": pin, "full_name": NAME, **fields}, ensure_ascii=False).encode()


def batch(*items: dict[str, object]) -> bytes:
    return json.dumps({"items": list(items)}, ensure_ascii=False).encode()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Citizens:
    """The central store, as the service reads it; keeps what was asked."""

    def __init__(self, records: Sequence[CitizenRecord] = (CITIZEN, SOMEONE_ELSE)) -> None:
        self.records = {r.pin: r for r in records}
        self.asked: list[str] = []  # every PIN read, one by one or many at once
        self.many: list[list[str]] = []

    async def read(self, pin: str) -> CitizenRecord | None:
        self.asked.append(pin)
        return self.records.get(pin)

    async def read_many(self, pins: Sequence[str]) -> dict[str, CitizenRecord]:
        self.many.append(list(pins))
        self.asked.extend(pins)
        return {pin: self.records[pin] for pin in pins if pin in self.records}


class Leases:
    """`partner_usage`: grants what is left of the day's quota, keeps every call."""

    def __init__(self) -> None:
        self.used: dict[tuple[str, datetime.date], int] = {}
        self.calls: list[tuple[str, datetime.date, int, int]] = []

    async def __call__(self, partner: str, day: datetime.date, want: int, quota: int) -> int:
        self.calls.append((partner, day, want, quota))
        used = self.used.get((partner, day), 0)
        granted = min(want, max(quota - used, 0))
        self.used[(partner, day)] = used + granted
        return granted


class AuditTable:
    """`access_audit`: the rows appended."""

    def __init__(self) -> None:
        self.rows: list[AuditRow] = []

    async def __call__(self, rows: Sequence[AuditRow]) -> None:
        self.rows.extend(rows)


class World:
    """A service with its fakes: partners bank-a (verify only), ministry-b (may look up),
    gone-c (revoked); `credential[partner_id]`; a fake clock for the rate limit."""

    def __init__(
        self,
        *,
        partners: Sequence[Partner] = (BANK, MINISTRY, GONE),
        batch_max_items: int = 5,
        max_backlog: int = 1000,
        lease_size: int = 10,
    ) -> None:
        self.citizens = Citizens()
        self.leases = Leases()
        self.table = AuditTable()
        self.trail = AuditTrail(self.table, flush_seconds=3600, max_backlog=max_backlog)
        self.service = VerificationService(
            Store(self.citizens.read, self.citizens.read_many),
            self.trail,
            QuotaLedger(self.leases, lease_size),
            AUDIT_KEY,
            batch_max_items,
        )
        self.clock = Clock()
        self.service.limiter = RateLimiter(self.clock)
        issued = {p.partner_id: issue_key(p.partner_id) for p in partners}
        self.credential = {pid: key.credential for pid, key in issued.items()}
        self.service.directory = PartnerDirectory(partners, [k.key for k in issued.values()])

    def run(self, call: Callable[[], Awaitable[Reply]]) -> Reply:
        """`call` on an event loop, then the audit rows written (the trail closed)."""

        async def scenario() -> Reply:
            reply = await call()
            await self.trail.close(timeout=1.0)
            return reply

        return asyncio.run(scenario())

    def verify(self, data: bytes, partner: str = "bank-a", purpose: str | None = "KYC") -> Reply:
        return self.run(
            lambda: self.service.verify(self.credential.get(partner, partner), purpose, data)
        )

    def verify_batch(
        self, data: bytes, partner: str = "bank-a", purpose: str | None = "KYC"
    ) -> Reply:
        return self.run(
            lambda: self.service.verify_batch(self.credential.get(partner, partner), purpose, data)
        )

    def look_up(
        self, pin: str, partner: str = "ministry-b", purpose: str | None = "SOCIAL_INSURANCE"
    ) -> Reply:
        return self.run(
            lambda: self.service.look_up(self.credential.get(partner, partner), purpose, pin)
        )

    def rows(self) -> list[AuditRow]:
        """The audit rows so far, each checked: never a PIN, only known values."""
        for row in self.table.rows:
            texts = (row.request_id, row.partner_id, row.purpose, row.endpoint, row.result)
            assert not any(pin in (text or "") for pin in PINS for text in texts), row
            assert all(pin.encode() not in (row.pin_hash or b"") for pin in PINS), row
            assert row.pin_hash is None or len(row.pin_hash) == 32
            assert row.partner_id is None or row.partner_id in PARTNER_IDS
            assert row.at.tzinfo is not None and row.latency_ms >= 0
        return list(self.table.rows)


def distinct(count: int) -> list[dict[str, object]]:
    """`count` verify items, each about another PIN (a batch asks about a PIN once)."""
    from popsync.domain.pin import make_pin

    return [
        {"pin": make_pin("079", "F", 1990, 900 + n).value, "full_name": NAME} for n in range(count)
    ]


def error_of(reply: Reply) -> tuple[int, str]:
    return reply.status, json.loads(reply.body)["error"]


def hashed(pin: str) -> bytes:
    return pin_hash(AUDIT_KEY, pin)


# ------------------------------------------------------------------------- answers


def test_a_verification_is_answered_and_audited_with_the_keyed_hash_of_its_pin() -> None:
    world = World()
    before = sample("popsync_verify_items_total", endpoint="verify", result="match")
    reply = world.verify(MATCHING)
    assert reply.status == 200 and reply.headers == {}
    assert json.loads(reply.body) == {
        "attributes": {"full_name": "match", "birth_date": "match"},
        "alive": True,
    }
    [row] = world.rows()
    assert (row.partner_id, row.purpose, row.endpoint, row.item) == ("bank-a", "KYC", "verify", 0)
    assert (row.pin_hash, row.result, row.status) == (hashed(PIN), "match", 200)
    assert row.pin_hash == world.service.hash_pin(PIN)
    assert world.citizens.asked == [PIN]
    assert sample("popsync_verify_items_total", endpoint="verify", result="match") - before == 1


def test_the_answer_is_what_compare_says() -> None:
    world = World()
    data = body(sex="M", birth_date="1990-05-17", residence={"province": "74", "commune": "26734"})
    expected, _ = compare(VerifyRequest.model_validate_json(data), CITIZEN)
    assert world.verify(data).body == expected.model_dump_json().encode()


def test_a_pin_without_a_citizen_and_a_citizen_matching_nothing_answer_byte_for_byte_alike() -> (
    None
):
    world = World()
    question = {"full_name": "Trần Văn Bảy", "birth_date": "1985-01-01", "sex": "F"}
    absent = world.verify(body(ABSENT, **question))
    present = world.verify(body(PIN, **question))
    assert (absent.status, absent.headers) == (present.status, present.headers) == (200, {})
    assert absent.body == present.body
    assert [row.result for row in world.rows()] == ["not_found", "no_match"]  # the audit tells


def test_a_deceased_citizen_is_told_not_alive_when_name_and_birth_date_match() -> None:
    world = World()
    reply = world.verify(body(OTHER, full_name="le van tam", birth_date="2000-01-01"))
    assert json.loads(reply.body)["alive"] is False


# ------------------------------------------------------------------------ refusals


def test_a_service_without_its_directory_is_not_ready() -> None:
    world = World()
    world.service.directory = None
    reply = world.verify(MATCHING)
    assert error_of(reply) == (503, "not_ready")
    [row] = world.rows()
    assert (row.partner_id, row.pin_hash, row.result, row.status) == (None, None, "error", 503)
    assert world.citizens.asked == [] and world.leases.calls == []


@pytest.mark.parametrize(
    "credential",
    [
        "",
        "psk_",
        "Bearer whatever",
        "psk_000000000000." + "A" * 43,  # unknown key id
        "gone-c",  # replaced by the revoked partner's key, below
        "wrong secret",
    ],
)
def test_a_bad_credential_is_refused_401_and_audited_without_partner(credential: str) -> None:
    world = World()
    if credential == "gone-c":
        credential = world.credential["gone-c"]
    elif credential == "wrong secret":
        key_id, _, secret = world.credential["bank-a"].partition(".")
        credential = f"{key_id}.{'B' if secret[0] == 'A' else 'A'}{secret[1:]}"
    reply = world.run(lambda: world.service.verify(credential, "KYC", MATCHING))
    assert error_of(reply) == (401, "unauthenticated")
    assert reply.headers == {"WWW-Authenticate": 'Bearer realm="popsync"'}
    [row] = world.rows()
    assert (row.partner_id, row.purpose, row.pin_hash) == (None, None, None)
    assert (row.endpoint, row.result, row.status) == ("verify", "unauthenticated", 401)
    assert world.citizens.asked == [] and world.leases.calls == []


def test_past_its_burst_a_partner_is_refused_429_with_retry_after() -> None:
    world = World()
    before = sample("popsync_partner_rejections_total", partner="bank-a", kind="rate_limit")
    assert [world.verify(MATCHING).status for _ in range(5)] == [200] * 5
    reply = world.verify(MATCHING)
    assert error_of(reply) == (429, "rate_limited")
    assert reply.headers == {"Retry-After": "1"}  # 0.1 s at 10/s, never 0
    assert "10 requests/s (burst 5)" in json.loads(reply.body)["message"]
    row = world.rows()[-1]
    assert (row.partner_id, row.purpose, row.result, row.status) == (
        "bank-a",
        None,  # refused before its purpose was looked at
        "rate_limited",
        429,
    )
    assert row.pin_hash is None
    assert (
        sample("popsync_partner_rejections_total", partner="bank-a", kind="rate_limit") - before
        == 1
    )
    world.clock.now += 0.1
    assert world.verify(MATCHING).status == 200


@pytest.mark.parametrize(("rate", "retry_after"), [(0.25, "4"), (0.5, "2"), (1.0, "1"), (0.3, "4")])
def test_retry_after_is_the_whole_seconds_until_a_token(rate: float, retry_after: str) -> None:
    slow = dataclasses.replace(
        BANK, policy=dataclasses.replace(BANK.policy, rate_per_second=rate, burst=1)
    )
    world = World(partners=[slow])
    assert world.verify(MATCHING).status == 200
    reply = world.verify(MATCHING)
    assert error_of(reply) == (429, "rate_limited")
    assert reply.headers == {"Retry-After": retry_after}


def test_partners_are_rate_limited_apart() -> None:
    world = World()
    for _ in range(5):
        world.verify(MATCHING)
    assert world.verify(MATCHING).status == 429
    assert world.look_up(PIN).status == 200


@pytest.mark.parametrize("purpose", [None, "", "kyc", "K", "KYC-1", "X" * 33, "KYC\x00"])
def test_a_missing_or_malformed_purpose_is_refused_422(purpose: str | None) -> None:
    world = World()
    reply = world.verify(MATCHING, purpose=purpose)
    assert error_of(reply) == (422, "purpose_required")
    [row] = world.rows()
    assert (row.partner_id, row.purpose, row.result, row.status) == ("bank-a", None, "invalid", 422)
    assert world.citizens.asked == []


def test_a_purpose_not_in_the_policy_is_refused_403_naming_the_allowed_ones() -> None:
    world = World()
    reply = world.verify(MATCHING, purpose="SOCIAL_INSURANCE")
    assert error_of(reply) == (403, "purpose_not_permitted")
    assert "(AML, KYC)" in json.loads(reply.body)["message"]
    [row] = world.rows()
    assert (row.purpose, row.result, row.status) == ("SOCIAL_INSURANCE", "denied", 403)
    assert world.citizens.asked == [] and world.leases.calls == []


def test_any_purpose_of_the_policy_is_accepted_and_audited() -> None:
    world = World()
    assert world.verify(MATCHING, purpose="AML").status == 200
    assert world.rows()[0].purpose == "AML"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"", "body"),
        (b"{", "body"),
        (b"\xff\xfe{}", "body"),
        (b"[]", "body"),
        (b"null", "body"),
        (b"[" * 5000 + b"]" * 5000, "body"),
        (b'{"pin": "999090000123", "full_name": "An"}', "pin"),
        (b'{"pin": "079090000123"}', "body"),
        (b'{"pin": "079090000123", "full_name": ""}', "full_name"),
        (b'{"pin": "079090000123", "full_name": "An", "alive": true}', "alive"),
        (b'{"pin": "079090000123", "birth_date": "1990-02-30"}', "birth_date"),
        (
            b'{"pin": "079090000123", "birth_date": "1990-05-17", "residence": {"province": "99"}}',
            "residence.province",
        ),
    ],
)
def test_a_malformed_body_is_refused_422_naming_where_never_echoing_the_values(
    data: bytes, where: str
) -> None:
    world = World()
    reply = world.verify(data)
    assert error_of(reply) == (422, "invalid_request")
    answer = json.loads(reply.body)
    assert answer["message"].startswith(f"{where}: ")
    assert all(set(d) == {"loc", "msg", "type"} for d in answer["detail"])
    assert PIN.encode() not in reply.body and b"999090000123" not in reply.body
    [row] = world.rows()
    assert (row.purpose, row.pin_hash, row.result, row.status) == ("KYC", None, "invalid", 422)
    assert world.citizens.asked == [] and world.leases.calls == []


def test_a_full_audit_refuses_503_and_reads_nothing() -> None:
    world = World(max_backlog=3)
    dropped = sample("popsync_audit_rows_dropped_total")
    world.trail.record(
        [
            AuditRow(
                datetime.datetime.now(UTC), "x", 0, None, None, "verify", None, "error", 503, 0.0
            )
        ]
        * 3
    )
    reply = asyncio.run(world.service.verify(world.credential["bank-a"], "KYC", MATCHING))
    assert error_of(reply) == (503, "audit_unavailable")
    assert reply.headers == {"Retry-After": "5"}
    assert world.citizens.asked == [] and world.leases.calls == []
    # With the backlog full, a refusal's row is dropped and counted, not kept.
    assert world.trail.backlog == 3
    assert sample("popsync_audit_rows_dropped_total") - dropped == 1


def test_a_used_up_daily_quota_is_refused_429_until_midnight_in_viet_nam() -> None:
    thrifty = dataclasses.replace(BANK, policy=dataclasses.replace(BANK.policy, daily_quota=2))
    world = World(partners=[thrifty])
    before = sample("popsync_partner_rejections_total", partner="bank-a", kind="daily_quota")
    assert [world.verify(MATCHING).status for _ in range(2)] == [200, 200]
    reply = world.verify(MATCHING)
    expected = seconds_to_next_day(datetime.datetime.now(UTC))
    assert error_of(reply) == (429, "daily_quota_exhausted")
    assert abs(int(reply.headers["Retry-After"]) - expected) <= 2
    assert "daily quota of 2 items" in json.loads(reply.body)["message"]
    row = world.rows()[-1]
    assert (row.pin_hash, row.result, row.status) == (hashed(PIN), "quota_exhausted", 429)
    assert (
        sample("popsync_partner_rejections_total", partner="bank-a", kind="daily_quota") - before
        == 1
    )
    assert world.citizens.asked == [PIN, PIN]
    assert world.verify(MATCHING).status == 429
    assert len(world.leases.calls) == 1  # used up: no more leases today
    today = quota_day(datetime.datetime.now(UTC))
    assert world.leases.calls[0] in {
        ("bank-a", day, 10, 2) for day in (today, today - datetime.timedelta(days=1))
    }


def test_quota_is_leased_once_per_lease_size() -> None:
    world = World(lease_size=3)
    for _ in range(5):
        world.clock.now += 1
        assert world.verify(MATCHING).status == 200
    assert [want for *_, want, _ in world.leases.calls] == [3, 3]


# ------------------------------------------------------------------ order of steps


def test_authentication_comes_first() -> None:
    world = World()
    reply = world.run(lambda: world.service.verify("nope", None, b"{"))
    assert error_of(reply) == (401, "unauthenticated")


def test_the_rate_limit_comes_before_the_purpose() -> None:
    world = World()
    for _ in range(5):
        world.verify(MATCHING)
    assert error_of(world.verify(b"{", purpose=None)) == (429, "rate_limited")


def test_the_purpose_comes_before_the_body() -> None:
    world = World()
    assert error_of(world.verify(b"{", purpose="nope")) == (422, "purpose_required")
    assert error_of(world.verify(b"{", purpose="SOCIAL_INSURANCE")) == (
        403,
        "purpose_not_permitted",
    )


def test_the_body_comes_before_the_audit_room_and_the_audit_room_before_the_quota() -> None:
    world = World(max_backlog=1)
    world.trail.record(
        [
            AuditRow(
                datetime.datetime.now(UTC), "x", 0, None, None, "verify", None, "error", 503, 0.0
            )
        ]
    )

    async def two() -> tuple[Reply, Reply]:
        credential = world.credential["bank-a"]
        return (
            await world.service.verify(credential, "KYC", b"{"),
            await world.service.verify(credential, "KYC", MATCHING),
        )

    invalid, full = asyncio.run(two())
    assert error_of(invalid) == (422, "invalid_request")
    assert error_of(full) == (503, "audit_unavailable")
    assert world.leases.calls == []


# ------------------------------------------------------------------------- batches


def test_a_batch_is_answered_item_by_item_in_order_one_audit_row_each() -> None:
    world = World()
    third = "079090000124"
    world.citizens.records[third] = dataclasses.replace(CITIZEN, pin=third)
    items = [
        {"pin": PIN, "full_name": "DANG THI ANH", "birth_date": "1990-05-17"},
        {"pin": OTHER, "full_name": NAME},  # exists, matches nothing
        {"pin": ABSENT, "full_name": NAME},  # no citizen
        {"pin": third, "birth_date": "1991-05-17", "full_name": NAME},  # partial
    ]
    before = {
        result: sample("popsync_verify_items_total", endpoint="verify_batch", result=result)
        for result in ("match", "no_match", "not_found", "partial")
    }
    reply = world.verify_batch(batch(*items))
    assert reply.status == 200
    results = json.loads(reply.body)["results"]
    expected = [
        json.loads(
            compare(
                VerifyRequest.model_validate(item), world.citizens.records.get(str(item["pin"]))
            )[0].model_dump_json()
        )
        for item in items
    ]
    assert results == expected
    assert results[1] == results[2] == {"attributes": {"full_name": "no_match"}, "alive": None}
    assert world.citizens.many == [sorted({PIN, OTHER, ABSENT, third})]  # one read
    rows = world.rows()
    assert [row.item for row in rows] == [0, 1, 2, 3]
    assert len({row.request_id for row in rows}) == 1
    assert [row.pin_hash for row in rows] == [
        hashed(PIN),
        hashed(OTHER),
        hashed(ABSENT),
        hashed(third),
    ]
    assert [row.result for row in rows] == ["match", "no_match", "not_found", "partial"]
    assert {(row.endpoint, row.status, row.partner_id, row.purpose) for row in rows} == {
        ("verify_batch", 200, "bank-a", "KYC")
    }
    after = {
        result: sample("popsync_verify_items_total", endpoint="verify_batch", result=result)
        for result in before
    }
    assert {r: after[r] - before[r] for r in before} == {
        "match": 1,
        "no_match": 1,
        "not_found": 1,
        "partial": 1,
    }


def test_a_batch_counts_its_items_against_the_quota_and_one_request_against_the_rate() -> None:
    world = World(lease_size=2)
    reply = world.verify_batch(batch(*distinct(5)))
    assert reply.status == 200
    assert [want for *_, want, _ in world.leases.calls] == [5]
    for _ in range(4):
        world.verify(MATCHING)
    assert world.verify(MATCHING).status == 429  # the batch took one token of 5


def test_a_batch_past_its_size_is_refused_422() -> None:
    world = World(batch_max_items=2)
    reply = world.verify_batch(batch(*distinct(3)))
    assert error_of(reply) == (422, "batch_too_large")
    assert "3 given, at most 2" in json.loads(reply.body)["message"]
    [row] = world.rows()
    assert (row.pin_hash, row.result, row.status) == (None, "invalid", 422)
    assert world.leases.calls == [] and world.citizens.asked == []


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b'{"items": []}', "items"),
        (b'{"items": [{"pin": "079090000123"}]}', "items.0"),
        (b'{"items": [{"pin": "079090000123", "full_name": "An"}, {"pin": "1"}]}', "items.1.pin"),
        (b'{"item": []}', "item"),
        (b"[]", "body"),
    ],
)
def test_a_malformed_batch_is_refused_422_naming_where(data: bytes, where: str) -> None:
    world = World()
    reply = world.verify_batch(data)
    assert error_of(reply) == (422, "invalid_request")
    assert json.loads(reply.body)["message"].startswith(f"{where}: ")
    [row] = world.rows()
    assert (row.pin_hash, row.result) == (None, "invalid")


def test_a_refused_batch_leaves_one_audit_row_per_item() -> None:
    thrifty = dataclasses.replace(BANK, policy=dataclasses.replace(BANK.policy, daily_quota=2))
    world = World(partners=[thrifty])
    reply = world.verify_batch(
        batch(
            {"pin": PIN, "full_name": NAME},
            {"pin": ABSENT, "full_name": NAME},
            {"pin": OTHER, "birth_date": "2000-01-01"},
        )
    )
    assert error_of(reply) == (429, "daily_quota_exhausted")
    rows = world.rows()
    assert [row.item for row in rows] == [0, 1, 2]
    assert [row.pin_hash for row in rows] == [hashed(PIN), hashed(ABSENT), hashed(OTHER)]
    assert {(row.result, row.status) for row in rows} == {("quota_exhausted", 429)}
    assert world.citizens.asked == []
    # what is left of the quota is still there for a smaller request
    assert (
        world.verify_batch(
            batch({"pin": PIN, "full_name": NAME}, {"pin": OTHER, "full_name": NAME})
        ).status
        == 200
    )


# ------------------------------------------------------------------------- look-ups


def test_a_look_up_shows_only_the_fields_of_the_policy() -> None:
    world = World()
    before = sample("popsync_verify_items_total", endpoint="citizen", result="found")
    reply = world.look_up(PIN)
    assert reply.status == 200
    assert json.loads(reply.body) == {
        "pin": PIN,
        "full_name": NAME,
        "life_status": "ALIVE",
        "permanent_residence": {"province": "79", "commune": "26734"},
    }
    [row] = world.rows()
    assert (row.partner_id, row.purpose, row.endpoint) == (
        "ministry-b",
        "SOCIAL_INSURANCE",
        "citizen",
    )
    assert (row.pin_hash, row.result, row.status) == (hashed(PIN), "found", 200)
    assert sample("popsync_verify_items_total", endpoint="citizen", result="found") - before == 1


def test_a_partner_that_may_only_verify_is_refused_a_look_up_403() -> None:
    world = World()
    reply = world.look_up(PIN, partner="bank-a", purpose="KYC")
    assert error_of(reply) == (403, "lookup_not_permitted")
    [row] = world.rows()
    assert (row.pin_hash, row.result, row.status) == (None, "denied", 403)
    assert world.citizens.asked == [] and world.leases.calls == []


def test_a_look_up_of_a_pin_without_a_citizen_is_404_and_audited() -> None:
    world = World()
    reply = world.look_up(ABSENT)
    assert error_of(reply) == (404, "not_found")
    [row] = world.rows()
    assert (row.pin_hash, row.result, row.status) == (hashed(ABSENT), "not_found", 404)
    assert world.leases.calls != []  # a look-up that finds nobody counts too


@pytest.mark.parametrize(
    "pin", ["07909000012", "999090000123", "079690000123", "abc", "", "0" * 300]
)
def test_a_look_up_of_a_malformed_pin_is_refused_422_without_echoing_it(pin: str) -> None:
    world = World()
    reply = world.look_up(pin)
    assert error_of(reply) == (422, "invalid_pin")
    assert not pin or pin.encode() not in reply.body
    [row] = world.rows()
    assert (row.pin_hash, row.result, row.status) == (None, "invalid", 422)
    assert world.citizens.asked == []


@pytest.mark.parametrize("pin", [f" {PIN}", f"{PIN}\n"])
def test_a_look_up_audits_and_reads_the_pin_it_accepted_as_the_pin_itself(pin: str) -> None:
    """A PIN with spaces around it is either refused or taken as the PIN (as /v1/verify
    does): the store is asked for a PIN and the audit row carries that PIN's hash, so that
    `popsync audit citizen PIN` finds the question."""
    world = World()
    reply = world.look_up(pin)
    rows = world.rows()
    assert all(re.fullmatch(r"[0-9]{12}", asked) for asked in world.citizens.asked)
    assert {row.pin_hash for row in rows} <= {None, *(hashed(p) for p in world.citizens.asked)}
    assert reply.status in (200, 422)


# --------------------------------------------------------------------- never a PIN


def test_no_audit_row_error_body_or_metric_label_carries_a_pin_or_a_name() -> None:
    world = World()
    world.verify(MATCHING)
    world.verify(body(ABSENT))
    world.verify(body("999090000123"))
    world.verify_batch(
        batch({"pin": PIN, "full_name": NAME}, {"pin": ABSENT, "birth_date": "1990-01-01"})
    )
    world.look_up(PIN)
    world.look_up("999090000123")
    for _ in range(6):
        world.verify(MATCHING)
    for row in world.rows():
        assert NAME not in repr(row)
    for family in REGISTRY.collect():
        if family.name not in ("popsync_verify_items", "popsync_partner_rejections"):
            continue
        for s in family.samples:
            for value in s.labels.values():
                assert not re.search(r"\d{12}", value) and NAME not in value
            if family.name == "popsync_verify_items":
                assert s.labels["endpoint"] in {"verify", "verify_batch", "citizen"}
                assert s.labels["result"] in {r.value for r in ResultClass}
            else:
                assert s.labels["kind"] in {"rate_limit", "daily_quota"}
                assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,62}", s.labels["partner"])


# ---------------------------------------------------------------- hostile bodies


def _generous_world() -> World:
    generous = dataclasses.replace(
        BANK, policy=dataclasses.replace(BANK.policy, burst=10**9, daily_quota=10**9)
    )
    return World(partners=[generous], lease_size=10**6)


_GENEROUS = _generous_world()


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(
        lambda d: json.dumps(d).encode(),
        st.fixed_dictionaries(
            {"pin": st.sampled_from([PIN, OTHER, ABSENT, "079690000123"])},
            optional={
                "full_name": st.text(max_size=20),
                "birth_date": st.dates().map(str) | st.text(max_size=10),
                "sex": st.sampled_from(["M", "F", "X"]),
                "residence": st.fixed_dictionaries(
                    {"province": st.text("0123456789", min_size=1, max_size=4)}
                ),
            },
        ),
    )
)
def test_any_body_is_answered_200_or_refused_422_never_raising(data: bytes) -> None:
    world = _GENEROUS
    reply = asyncio.run(world.service.verify(world.credential["bank-a"], "KYC", data))
    assert reply.status in (200, 422)
    answer = json.loads(reply.body)
    assert set(answer) == (
        {"attributes", "alive"} if reply.status == 200 else {"error", "message", "detail"}
    )


# ------------------------------------------------------------------- the helpers


def test_error_bodies_are_json_with_a_code_and_a_line() -> None:
    assert json.loads(error_body("x", "Đặng")) == {"error": "x", "message": "Đặng"}
    assert json.loads(error_body("x", "m", [{"loc": []}])) == {
        "error": "x",
        "message": "m",
        "detail": [{"loc": []}],
    }
    refused = Refused(429, "rate_limited", "slow down", "rate_limited", {"Retry-After": "3"})
    assert refused.reply() == Reply(
        429, error_body("rate_limited", "slow down"), {"Retry-After": "3"}
    )


def test_an_invalid_body_keeps_at_most_20_details_without_input() -> None:
    items = [{"pin": "999090000123", "full_name": NAME}] * 30
    with pytest.raises(ValidationError) as exc:
        VerifyRequest.model_validate_json(b"{}")
    refused = invalid_body(exc.value)
    assert (refused.status, refused.error, refused.result) == (422, "invalid_request", "invalid")
    world = World(batch_max_items=100)
    reply = world.verify_batch(batch(*items))
    detail = json.loads(reply.body)["detail"]
    assert len(detail) == 20
    assert b"999090000123" not in reply.body and NAME.encode() not in reply.body


def test_the_directory_is_refreshed_and_kept_when_a_refresh_fails() -> None:
    world = World()
    first = world.service.directory
    fresh = PartnerDirectory([BANK], [])
    outcomes: list[Any] = [fresh, ConnectionError("PostgreSQL went away")]
    seen: list[PartnerDirectory | None] = []

    async def load() -> PartnerDirectory:
        outcome = outcomes.pop(0) if outcomes else fresh
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def scenario() -> None:
        task = asyncio.create_task(
            refresh_forever(
                world.service, load, 0.001, lambda: seen.append(world.service.directory)
            )
        )
        while len(seen) < 3:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(scenario())
    assert first is not fresh
    assert seen[:3] == [fresh, fresh, fresh]  # the failed refresh kept the last one


def test_a_store_that_fails_is_a_503_and_is_audited_while_a_bug_still_raises() -> None:
    import psycopg
    import pytest

    world = World()

    async def unreachable(_: object) -> CitizenRecord | None:
        raise psycopg.OperationalError("connection refused")

    world.service.store = Store(unreachable, world.citizens.read_many)
    reply = world.verify(MATCHING)
    assert error_of(reply) == (503, "database_unavailable")
    assert reply.headers == {"Retry-After": "1"}
    (row,) = world.rows()
    assert (row.status, row.result, row.pin_hash) == (503, "error", hashed(PIN))

    async def buggy(_: object) -> CitizenRecord | None:
        raise KeyError("a bug")

    world.service.store = Store(buggy, world.citizens.read_many)
    with pytest.raises(KeyError):
        world.verify(MATCHING)


def test_a_batch_asking_twice_about_one_pin_is_refused_422() -> None:
    world = World()
    reply = world.verify_batch(
        batch({"pin": PIN, "birth_date": "1990-01-01"}, {"pin": PIN, "birth_date": "1990-01-02"})
    )
    assert error_of(reply) == (422, "invalid_request")
    assert "items 0 and 1 ask about the same PIN" in json.loads(reply.body)["message"]
    assert world.citizens.asked == []


def test_one_pin_is_verified_at_most_so_often_a_day_by_one_partner() -> None:
    world = World()
    world.service.repeats = RepeatGuard(limit=3)
    for _ in range(3):
        assert world.verify(MATCHING).status == 200
        world.clock.now += 1  # tokens of the rate limit
    refused = world.verify(MATCHING)
    assert error_of(refused) == (429, "too_many_questions_about_a_pin")
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400
    assert world.rows()[-1].result == "repeat_limited"
    other = json.dumps({"pin": OTHER, "full_name": NAME}).encode()
    assert world.verify(other).status == 200  # another PIN is not limited
    assert world.verify(MATCHING, partner="ministry-b", purpose="SOCIAL_INSURANCE").status == 200


def test_a_directory_not_re_read_lately_refuses_requests_503() -> None:
    world = World()
    world.service.directory_max_age = 10.0
    world.service.directory_at -= 11.0
    assert error_of(world.verify(MATCHING)) == (503, "not_ready")


def test_a_bug_is_audited_as_a_500_before_it_is_raised() -> None:
    world = World()

    async def buggy(_: object) -> CitizenRecord | None:
        raise KeyError("a bug")

    world.service.store = Store(buggy, world.citizens.read_many)
    with pytest.raises(KeyError):
        world.verify(MATCHING)
    asyncio.run(world.trail.close(timeout=1.0))
    assert [(row.status, row.result) for row in world.rows()] == [(500, "error")]
