"""The access audit: a keyed hash of each PIN (never the PIN), rows written behind the
answers, kept and written again when a write fails, and written on close."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from popsync.adapters.postgres.partners import AuditRow
from popsync.verification.audit import AuditTrail, pin_hash

KEY = b"k" * 32
PIN = "079090000123"
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
FAST = 0.005  # flush interval of the tests: seconds


def rows(count: int, first: int = 0) -> list[AuditRow]:
    return [
        AuditRow(
            NOW, f"req-{n}", 0, "bank-a", "KYC", "verify", pin_hash(KEY, PIN), "match", 200, 1.5
        )
        for n in range(first, first + count)
    ]


class Appends:
    """The audit table: keeps what each append wrote; `failures` appends raise first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.written: list[AuditRow] = []
        self.calls = 0

    async def __call__(self, batch: Sequence[AuditRow]) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("PostgreSQL went away")
        self.written.extend(batch)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def until(condition: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.001)
    assert condition(), "not in time"  # type: ignore[operator]


# ------------------------------------------------------------------------ pin hash


def test_the_pin_hash_is_hmac_sha256_keyed_with_the_audit_key() -> None:
    digest = pin_hash(KEY, PIN)
    assert digest == hmac.new(KEY, PIN.encode(), hashlib.sha256).digest()
    assert len(digest) == 32
    assert digest != hashlib.sha256(PIN.encode()).digest()  # not a plain hash
    assert PIN.encode() not in digest


def test_the_pin_hash_is_stable_and_differs_by_pin_and_by_key() -> None:
    assert pin_hash(KEY, PIN) == pin_hash(KEY, PIN)
    assert pin_hash(KEY, PIN) != pin_hash(KEY, "079090000124")
    assert pin_hash(KEY, PIN) != pin_hash(b"j" * 32, PIN)


# ------------------------------------------------------------------------- backlog


def test_recorded_rows_wait_in_the_backlog() -> None:
    trail = AuditTrail(Appends(), flush_seconds=FAST, max_backlog=10)
    assert (trail.backlog, trail.full, trail.healthy) == (0, False, True)
    trail.record(rows(4))
    assert (trail.backlog, trail.full, trail.healthy) == (4, False, True)
    trail.record(rows(1))
    assert (trail.backlog, trail.healthy) == (5, False)  # half the limit: not healthy
    trail.record(rows(5))
    assert (trail.backlog, trail.full) == (10, True)


def test_the_writer_writes_the_rows_in_order_behind_the_answers() -> None:
    appends = Appends()
    trail = AuditTrail(appends, flush_seconds=FAST, max_backlog=100)
    written_before = sample("popsync_audit_rows_written_total")

    async def scenario() -> None:
        trail.start()
        trail.record(rows(3))
        await until(lambda: len(appends.written) == 3)
        trail.record(rows(2, first=3))
        await until(lambda: len(appends.written) == 5)
        await trail.close(timeout=1.0)

    asyncio.run(scenario())
    assert [r.request_id for r in appends.written] == [f"req-{n}" for n in range(5)]
    assert trail.backlog == 0 and trail.healthy
    assert sample("popsync_audit_rows_written_total") - written_before == 5
    assert sample("popsync_audit_backlog") == 0


def test_nothing_is_written_while_there_is_nothing_to_write() -> None:
    appends = Appends()
    trail = AuditTrail(appends, flush_seconds=FAST, max_backlog=100)

    async def scenario() -> None:
        trail.start()
        await asyncio.sleep(FAST * 5)
        await trail.close(timeout=1.0)

    asyncio.run(scenario())
    assert appends.calls == 0


def test_a_failed_write_keeps_the_rows_and_writes_them_again() -> None:
    appends = Appends(failures=1)
    trail = AuditTrail(appends, flush_seconds=FAST, max_backlog=4)
    failures_before = sample("popsync_audit_write_failures_total")
    seen: dict[str, object] = {}

    async def scenario() -> None:
        trail.start()
        trail.record(rows(3))
        await until(lambda: appends.calls == 1)
        await asyncio.sleep(0)
        seen["backlog"], seen["healthy"] = trail.backlog, trail.healthy
        trail.record(rows(2, first=3))  # while the writer waits to try again
        seen["full"] = trail.full
        await until(lambda: len(appends.written) == 5)
        await trail.close(timeout=1.0)

    asyncio.run(scenario())
    assert seen == {"backlog": 3, "healthy": False, "full": True}
    assert [r.request_id for r in appends.written] == [f"req-{n}" for n in range(5)]
    assert appends.calls == 2
    assert trail.healthy and trail.backlog == 0
    assert sample("popsync_audit_write_failures_total") - failures_before == 1


def test_close_writes_what_is_left() -> None:
    appends = Appends()
    trail = AuditTrail(appends, flush_seconds=3600, max_backlog=100)

    async def scenario() -> None:
        trail.start()
        trail.record(rows(7))
        await trail.close(timeout=1.0)

    asyncio.run(scenario())
    assert len(appends.written) == 7 and trail.backlog == 0


def test_close_without_a_writer_writes_what_is_left() -> None:
    appends = Appends()
    trail = AuditTrail(appends, flush_seconds=3600, max_backlog=100)
    trail.record(rows(2))
    asyncio.run(trail.close(timeout=1.0))
    assert len(appends.written) == 2


def test_close_tries_again_within_its_timeout() -> None:
    appends = Appends(failures=1)
    trail = AuditTrail(appends, flush_seconds=3600, max_backlog=100)
    trail.record(rows(2))
    asyncio.run(trail.close(timeout=1.0))  # the first retry is 0.1 s later
    assert len(appends.written) == 2 and appends.calls == 2


def test_close_gives_up_at_its_timeout_keeping_the_rows(caplog: pytest.LogCaptureFixture) -> None:
    appends = Appends(failures=1000)
    trail = AuditTrail(appends, flush_seconds=3600, max_backlog=100)
    trail.record(rows(2))

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await trail.close(timeout=0.05)
        return loop.time() - started

    took = asyncio.run(scenario())
    assert took < 1.0
    assert trail.backlog == 2 and not trail.healthy and appends.written == []
    assert "2 rows could not be written before exit" in caplog.text
    assert PIN not in caplog.text


def test_close_while_a_write_is_under_way_loses_no_row() -> None:
    """A graceful stop writes every row (the module's docstring): close() lets the write
    under way finish, then writes the rows recorded meanwhile; each row once."""
    written: list[AuditRow] = []

    async def scenario() -> int:
        in_flight = asyncio.Event()

        async def append(batch: Sequence[AuditRow]) -> None:
            if not in_flight.is_set():
                in_flight.set()
                await asyncio.sleep(0.05)  # a slow COPY
            written.extend(batch)

        trail = AuditTrail(append, flush_seconds=FAST, max_backlog=100)
        trail.start()
        trail.record(rows(3))
        await asyncio.wait_for(in_flight.wait(), 2.0)
        trail.record(rows(2, first=3))
        await trail.close(timeout=1.0)
        return trail.backlog

    left = asyncio.run(scenario())
    assert [r.request_id for r in written] == [f"req-{n}" for n in range(5)]
    assert left == 0


def test_close_returns_within_its_timeout_while_writes_fail() -> None:
    """`close(timeout)` tries "for up to `timeout` seconds": waiting for the writer's back-off
    or sleeping its own after the deadline makes a stop overrun the pod's grace period."""
    appends = Appends(failures=1000)
    trail = AuditTrail(appends, flush_seconds=FAST, max_backlog=100)

    async def scenario() -> float:
        trail.start()
        trail.record(rows(2))
        await until(lambda: appends.calls == 1)  # the writer now backs off (0.1 s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await trail.close(timeout=0.05)
        return loop.time() - started

    took = asyncio.run(scenario())
    assert trail.backlog == 2
    assert took < 0.05 + 0.15
