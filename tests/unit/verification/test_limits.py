"""Per-partner limits: the token bucket (a fake clock: burst, refill, the wait to tell), the
daily quota leased from a shared store (one lease per lease size, one at a time per
partner, none once the day's quota is used up), and the Asia/Ho_Chi_Minh quota day."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsync.verification.limits import (
    VIETNAM,
    QuotaLedger,
    RateLimiter,
    TokenBucket,
    quota_day,
    seconds_to_next_day,
)
from popsync.verification.partners import Policy

UTC = datetime.UTC
DAY = datetime.date(2026, 3, 1)
POLICY = Policy(frozenset({"KYC"}), frozenset(), rate_per_second=2.0, burst=3, daily_quota=100)


# ------------------------------------------------------------------------- quota day


@pytest.mark.parametrize(
    ("now", "day"),
    [
        (datetime.datetime(2026, 3, 1, 16, 59, 59, 999999, tzinfo=UTC), datetime.date(2026, 3, 1)),
        (datetime.datetime(2026, 3, 1, 17, 0, tzinfo=UTC), datetime.date(2026, 3, 2)),
        (datetime.datetime(2026, 3, 1, 0, 0, tzinfo=UTC), datetime.date(2026, 3, 1)),
        (datetime.datetime(2026, 12, 31, 17, 0, tzinfo=UTC), datetime.date(2027, 1, 1)),
        (datetime.datetime(2026, 3, 1, 23, 30, tzinfo=VIETNAM), datetime.date(2026, 3, 1)),
        (
            datetime.datetime(
                2026, 3, 1, 12, 0, tzinfo=datetime.timezone(-datetime.timedelta(hours=8))
            ),
            datetime.date(2026, 3, 2),  # 20:00 UTC is 03:00 in Hà Nội
        ),
    ],
)
def test_the_quota_day_is_the_calendar_day_in_viet_nam(
    now: datetime.datetime, day: datetime.date
) -> None:
    assert quota_day(now) == day


def test_viet_nam_is_utc_plus_seven_without_daylight_saving() -> None:
    for month in (1, 7):
        assert datetime.datetime(2026, month, 1, tzinfo=VIETNAM).utcoffset() == datetime.timedelta(
            hours=7
        )
    assert VIETNAM.tzname(None) == "Asia/Ho_Chi_Minh"


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (datetime.datetime(2026, 3, 1, 17, 0, tzinfo=UTC), 86_400),  # local midnight
        (datetime.datetime(2026, 3, 1, 16, 59, 59, tzinfo=UTC), 1),
        (datetime.datetime(2026, 3, 1, 16, 59, 59, 900_000, tzinfo=UTC), 1),  # never 0
        (datetime.datetime(2026, 3, 1, 16, 59, 58, 500_000, tzinfo=UTC), 2),  # rounded up
        (datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC), 5 * 3600),  # 19:00 local
        (datetime.datetime(2026, 3, 1, 17, 0, 0, 1, tzinfo=UTC), 86_400),
    ],
)
def test_seconds_to_the_next_quota_day(now: datetime.datetime, seconds: int) -> None:
    assert seconds_to_next_day(now) == seconds


@settings(max_examples=200, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_the_next_quota_day_starts_after_the_seconds_told(now: datetime.datetime) -> None:
    seconds = seconds_to_next_day(now)
    assert 1 <= seconds <= 86_400
    assert quota_day(now + datetime.timedelta(seconds=seconds)) == quota_day(
        now
    ) + datetime.timedelta(days=1)
    if seconds > 1:
        assert quota_day(now + datetime.timedelta(seconds=seconds - 1)) == quota_day(now)


# ---------------------------------------------------------------------- rate limit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_bucket_takes_a_token_or_tells_the_wait() -> None:
    bucket = TokenBucket(rate=4.0, burst=2, tokens=2.0, at=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.125) == pytest.approx(0.125)  # half a token there
    assert bucket.take(0.25) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(1.0)  # capped at burst


def test_a_partner_has_its_burst_at_once_then_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert [limiter.wait_needed("bank-a", POLICY) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_needed("bank-a", POLICY) == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.wait_needed("bank-a", POLICY) == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.wait_needed("bank-a", POLICY) == 0.0
    assert limiter.wait_needed("bank-a", POLICY) == pytest.approx(0.5)


def test_a_refused_request_takes_no_token() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.wait_needed("bank-a", POLICY)
    for _ in range(10):
        assert limiter.wait_needed("bank-a", POLICY) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.wait_needed("bank-a", POLICY) == 0.0


def test_an_idle_partner_refills_up_to_its_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.wait_needed("bank-a", POLICY)
    clock.now += 3600
    assert [limiter.wait_needed("bank-a", POLICY) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_each_partner_has_its_own_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.wait_needed("bank-a", POLICY)
    assert limiter.wait_needed("bank-a", POLICY) > 0
    assert limiter.wait_needed("ministry-b", POLICY) == 0.0


def test_a_lower_burst_takes_effect_at_once() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.wait_needed("bank-a", POLICY)  # 2 tokens left of 3
    smaller = replace(POLICY, burst=1)
    assert limiter.wait_needed("bank-a", smaller) == 0.0
    assert limiter.wait_needed("bank-a", smaller) == pytest.approx(0.5)


def test_a_new_rate_takes_effect_at_once() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.wait_needed("bank-a", POLICY)
    slower = replace(POLICY, rate_per_second=0.1)
    assert limiter.wait_needed("bank-a", slower) == pytest.approx(10.0)


def test_a_policy_change_keeps_the_tokens_refilled_while_the_partner_was_idle() -> None:
    """A partner that used its burst and then waited long enough has it back; a policy
    change while it was idle (here: a higher rate) must not take it away."""
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.wait_needed("bank-a", POLICY)
    clock.now += 60  # the bucket is full again at 2 tokens/s
    faster = replace(POLICY, rate_per_second=4.0)
    assert limiter.wait_needed("bank-a", faster) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.1, 100.0),
    st.integers(1, 20),
    st.lists(st.floats(0.0, 2.0), min_size=1, max_size=60),
)
def test_no_more_requests_pass_than_burst_plus_rate_times_time(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(clock)
    policy = replace(POLICY, rate_per_second=rate, burst=burst)
    passed = 0
    for step in steps:
        clock.now += step
        wait = limiter.wait_needed("bank-a", policy)
        assert wait >= 0.0
        if wait == 0.0:
            passed += 1
        else:
            assert wait <= 1.0 / rate + 1e-9
    assert passed <= burst + rate * clock.now + 1e-6


# --------------------------------------------------------------------- daily quota


class Leases:
    """The shared store of leases (`partner_usage`): grants what is left of each partner's
    quota for the day, at most what is asked; keeps every call."""

    def __init__(self, delay: int = 0) -> None:
        self.used: dict[tuple[str, datetime.date], int] = {}
        self.calls: list[tuple[str, datetime.date, int, int]] = []
        self.delay = delay  # event-loop turns a lease takes

    async def __call__(self, partner: str, day: datetime.date, want: int, quota: int) -> int:
        self.calls.append((partner, day, want, quota))
        for _ in range(self.delay):
            await asyncio.sleep(0)
        used = self.used.get((partner, day), 0)
        granted = min(want, max(quota - used, 0))
        self.used[(partner, day)] = used + granted
        return granted


def test_a_ledger_leases_once_per_lease_size() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        return [await ledger.spend("bank-a", 1, 100, DAY) for _ in range(25)]

    assert asyncio.run(scenario()) == [True] * 25
    assert leases.calls == [("bank-a", DAY, 10, 100)] * 3
    assert leases.used == {("bank-a", DAY): 30}


def test_a_request_larger_than_a_lease_leases_what_it_needs() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        return [
            await ledger.spend("bank-a", 3, 100, DAY),
            await ledger.spend("bank-a", 25, 100, DAY),
        ]

    assert asyncio.run(scenario()) == [True, True]
    assert [want for _, _, want, _ in leases.calls] == [10, 18]  # 7 left, 18 more for 25


def test_concurrent_spends_wait_for_one_lease() -> None:
    leases = Leases(delay=5)
    ledger = QuotaLedger(leases, lease_size=50)

    async def scenario() -> list[bool]:
        return list(await asyncio.gather(*(ledger.spend("bank-a", 1, 100, DAY) for _ in range(40))))

    assert asyncio.run(scenario()) == [True] * 40
    assert leases.calls == [("bank-a", DAY, 50, 100)]


def test_concurrent_spends_past_a_lease_lease_again_once() -> None:
    leases = Leases(delay=3)
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        return list(await asyncio.gather(*(ledger.spend("bank-a", 1, 100, DAY) for _ in range(15))))

    assert asyncio.run(scenario()) == [True] * 15
    assert len(leases.calls) == 2


def test_the_quota_used_up_refuses_without_asking_the_store_again() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        return [await ledger.spend("bank-a", 1, 15, DAY) for _ in range(20)]

    assert asyncio.run(scenario()) == [True] * 15 + [False] * 5
    assert [want for _, _, want, _ in leases.calls] == [10, 10]  # granted 10, then 5 of 10
    assert leases.used == {("bank-a", DAY): 15}


def test_what_is_left_of_a_short_lease_is_still_spent() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        spend = ledger.spend
        return [
            await spend("bank-a", 3, 5, DAY),  # leases 10, granted 5: the quota is used up
            await spend("bank-a", 3, 5, DAY),  # 2 left: refused, nothing spent
            await spend("bank-a", 2, 5, DAY),
            await spend("bank-a", 1, 5, DAY),
        ]

    assert asyncio.run(scenario()) == [True, False, True, False]
    assert len(leases.calls) == 1


def test_a_quota_of_zero_refuses_everything() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        return [await ledger.spend("bank-a", 1, 0, DAY) for _ in range(3)]

    assert asyncio.run(scenario()) == [False] * 3
    assert len(leases.calls) == 1


def test_a_new_day_starts_a_new_allowance() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)
    tomorrow = DAY + datetime.timedelta(days=1)

    async def scenario() -> list[bool]:
        today = [await ledger.spend("bank-a", 1, 2, DAY) for _ in range(3)]
        return [*today, *[await ledger.spend("bank-a", 1, 2, tomorrow) for _ in range(3)]]

    assert asyncio.run(scenario()) == [True, True, False, True, True, False]
    assert [(day, want) for _, day, want, _ in leases.calls] == [(DAY, 10), (tomorrow, 10)]


def test_partners_have_their_own_allowances() -> None:
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size=10)

    async def scenario() -> list[bool]:
        return [
            await ledger.spend("bank-a", 1, 1, DAY),
            await ledger.spend("bank-a", 1, 1, DAY),
            await ledger.spend("ministry-b", 1, 1, DAY),
        ]

    assert asyncio.run(scenario()) == [True, False, True]
    assert [partner for partner, *_ in leases.calls] == ["bank-a", "ministry-b"]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 60),
    st.integers(1, 20),
    st.lists(st.integers(1, 15), min_size=1, max_size=40),
)
def test_one_process_spends_the_whole_quota_and_never_more(
    quota: int, lease_size: int, requests: list[int]
) -> None:
    """A request is refused exactly when what is left of the day's quota is less than it."""
    leases = Leases()
    ledger = QuotaLedger(leases, lease_size)

    async def scenario() -> None:
        spent = 0
        for items in requests:
            allowed = await ledger.spend("bank-a", items, quota, DAY)
            assert allowed is (quota - spent >= items)
            spent += items if allowed else 0
        assert leases.used[("bank-a", DAY)] <= quota

    asyncio.run(scenario())


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 60),
    st.integers(1, 20),
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 8)), min_size=1, max_size=40),
)
def test_processes_together_never_spend_more_than_the_quota(
    quota: int, lease_size: int, requests: list[tuple[int, int]]
) -> None:
    leases = Leases(delay=1)
    ledgers = [QuotaLedger(leases, lease_size) for _ in range(3)]

    async def scenario() -> int:
        allowed = await asyncio.gather(
            *(ledgers[process].spend("bank-a", items, quota, DAY) for process, items in requests)
        )
        return sum(items for (_, items), ok in zip(requests, allowed, strict=True) if ok)

    assert asyncio.run(scenario()) <= quota
    assert leases.used.get(("bank-a", DAY), 0) <= quota
