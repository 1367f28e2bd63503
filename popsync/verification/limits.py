"""Per-partner limits: a rate limit (token bucket, per process) and a daily quota (shared
by every process through PostgreSQL leases).

The bucket refills `rate_per_second` tokens a second up to `burst`; a request takes one
(a batch too: the rate limit counts requests, the quota counts items). The daily quota
counts verified or looked-up items per Asia/Ho_Chi_Minh calendar day; each process takes
`lease` items at a time from `partner_usage` and spends them from memory, so a request
costs one UPDATE per lease, not one each, and the processes together never exceed it.
A refusal says when to come back (`Retry-After`).
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from popsync.verification.partners import Policy

VIETNAM = datetime.timezone(datetime.timedelta(hours=7), "Asia/Ho_Chi_Minh")


def quota_day(now: datetime.datetime) -> datetime.date:
    return now.astimezone(VIETNAM).date()


def seconds_to_next_day(now: datetime.datetime) -> int:
    local = now.astimezone(VIETNAM)
    midnight = datetime.datetime.combine(local.date(), datetime.time(), VIETNAM)
    return max(1, math.ceil((midnight + datetime.timedelta(days=1) - local).total_seconds()))


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float
    at: float

    def take(self, now: float) -> float:
        """0 if a token was taken; else the seconds until one will be there."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per partner; a policy change resizes it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._clock = clock

    def wait_needed(self, partner_id: str, policy: Policy) -> float:
        """0 if the request may go now, else the seconds the partner should wait."""
        now = self._clock()
        bucket = self._buckets.get(partner_id)
        if bucket is None or bucket.rate != policy.rate_per_second or bucket.burst != policy.burst:
            # A changed policy keeps what the old bucket held, refilled up to now.
            held = 0.0 if bucket is None else bucket.tokens + (now - bucket.at) * bucket.rate
            tokens = float(policy.burst) if bucket is None else min(held, policy.burst)
            bucket = TokenBucket(policy.rate_per_second, policy.burst, tokens, now)
            self._buckets[partner_id] = bucket
        return bucket.take(now)


Lease = Callable[[str, datetime.date, int, int], Awaitable[int]]


# After the quota ran out, how long before this process asks PostgreSQL again: another
# process may return nothing, but an operator may have raised the quota.
EXHAUSTED_RECHECK_SECONDS = 60.0


@dataclass
class _Allowance:
    day: datetime.date
    quota: int
    items: int = 0
    exhausted_at: float | None = None  # monotonic time the lease came back short


class QuotaLedger:
    """What this process may still spend of each partner's daily quota, leased from
    PostgreSQL (`lease(partner, day, want, quota) -> granted`)."""

    def __init__(
        self, lease: Lease, lease_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lease = lease
        self._clock = clock
        self._lease_size = lease_size
        self._allowances: dict[str, _Allowance] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def spend(self, partner_id: str, items: int, quota: int, day: datetime.date) -> bool:
        """Spend `items` of today's quota; False (nothing spent) if it does not allow them."""
        allowance = self._allowances.get(partner_id)
        if allowance is None or allowance.day != day or allowance.quota != quota:
            # A new day, or a changed policy: lease again (what is held stays held).
            held = 0 if allowance is None or allowance.day != day else allowance.items
            allowance = self._allowances[partner_id] = _Allowance(day, quota, held)
        if allowance.items >= items:
            allowance.items -= items
            return True
        now = self._clock()
        recently = allowance.exhausted_at is not None and (
            now - allowance.exhausted_at < EXHAUSTED_RECHECK_SECONDS
        )
        if recently:
            return False
        # One lease at a time per partner: concurrent requests wait for it, not lease twice.
        lock = self._locks.setdefault(partner_id, asyncio.Lock())
        async with lock:
            if allowance.items < items:
                want = max(self._lease_size, items - allowance.items)
                granted = await self._lease(partner_id, day, want, quota)
                allowance.items += granted
                allowance.exhausted_at = self._clock() if granted < want else None
        if allowance.items >= items:
            allowance.items -= items
            return True
        return False


class RepeatGuard:
    """At most `limit` verifications a day of one PIN by one partner, in this process.

    Kept for the `capacity` most recent (partner, PIN) pairs (least recently asked go
    first). Keys are strings and values integers (the day's ordinal and the count), none of
    which the cyclic garbage collector tracks: with tuples, 100,000 entries cost a request
    tens of µs of collections. A batch is allowed whole or not at all.
    """

    _PER_DAY = 1 << 20  # count in the low bits, the day's ordinal above

    def __init__(self, limit: int, capacity: int = 200_000) -> None:
        self._limit = limit
        self._capacity = capacity
        # Least recently asked first; OrderedDict, since popping a plain dict's first key
        # skips the holes earlier pops left, which grows until the next resize.
        self._counts: OrderedDict[str, int] = OrderedDict()

    def allow(self, partner_id: str, pins: Sequence[str], day: datetime.date) -> bool:
        counts = self._counts
        today = day.toordinal() * self._PER_DAY
        keys = [f"{partner_id}\0{pin}" for pin in pins]
        asked = []
        for key in keys:
            value = counts.get(key, 0)
            asked.append(value - today if value >= today else 0)
        if any(n >= self._limit for n in asked):
            return False
        for key, n in zip(keys, asked, strict=True):
            counts[key] = today + n + 1
            counts.move_to_end(key)
        while len(counts) > self._capacity:
            counts.popitem(last=False)
        return True
