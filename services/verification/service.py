"""The verification service's request handling, from a credential and a body to an answer.

Each request goes through the same steps, each of which may refuse it:
authenticate (401) → rate limit (429) → purpose stated and allowed (422 / 403) → body
well formed (422) → the audit can take it (503) → not asked too often about one PIN today
(429) → daily quota (429) → read the store →
compare or show by policy → audit row(s) → answer. Every request, refused or answered,
leaves its audit rows; an answer never carries more than the partner's policy allows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter as PromCounter
from pydantic import TypeAdapter, ValidationError

from popsync.adapters.postgres.partners import AuditRow
from popsync.domain.pin import PinError
from popsync.runtime import metrics
from popsync.runtime.retry import is_infrastructure_error
from popsync.verification.audit import AuditTrail, pin_hash
from popsync.verification.comparison import CitizenRecord, ResultClass, compare, view
from popsync.verification.limits import (
    QuotaLedger,
    RateLimiter,
    RepeatGuard,
    quota_day,
    seconds_to_next_day,
)
from popsync.verification.models import (
    VerifyAnswer,
    VerifyBatchRequest,
    VerifyRequest,
    checked_pin,
)
from popsync.verification.partners import PURPOSE, Partner, PartnerDirectory

log = logging.getLogger(__name__)

JSON = "application/json"
_ANSWERS = TypeAdapter(list[VerifyAnswer])


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """A request refused at one step; `result` is its class in the audit."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        result: str,
        headers: dict[str, str] | None = None,
        detail: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.result = result
        self.headers = headers or {}
        self.detail = detail

    def reply(self) -> Reply:
        return Reply(self.status, error_body(self.error, self.message, self.detail), self.headers)


def error_body(error: str, message: str, detail: list[dict[str, Any]] | None = None) -> bytes:
    payload: dict[str, Any] = {"error": error, "message": message}
    if detail is not None:
        payload["detail"] = detail
    return json.dumps(payload, ensure_ascii=False).encode()


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """Where and what, never the value given (it may be a PIN or a name)."""
    return [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ][:20]


def invalid_body(exc: ValidationError) -> Refused:
    detail = validation_detail(exc)
    first = detail[0] if detail else {"loc": [], "msg": "invalid"}
    where = ".".join(first["loc"]) or "body"
    return Refused(422, "invalid_request", f"{where}: {first['msg']}", "invalid", detail=detail)


def unauthenticated() -> Refused:
    """The one 401, whatever was wrong (a new one each time: a shared exception would
    keep the last request's frames, credential included, in its traceback)."""
    return Refused(
        401,
        "unauthenticated",
        "missing, malformed, unknown or revoked API key (Authorization: Bearer psk_…)",
        "unauthenticated",
        headers={"WWW-Authenticate": 'Bearer realm="popsync"'},
    )


# A request's body: its bytes, or how to read them; the service reads it at the body step,
# after the key, the rate and the purpose (the HTTP front hands a reader, refusing 413/408).
Body = bytes | Callable[[], Awaitable[bytes]]


async def _read(body: Body) -> bytes:
    return body if isinstance(body, bytes) else await body()


Read = Callable[[str], Awaitable[CitizenRecord | None]]
ReadMany = Callable[[Sequence[str]], Awaitable[dict[str, CitizenRecord]]]


@dataclass
class Store:
    """How the service reads the central store (a pool behind it)."""

    read: Read
    read_many: ReadMany


_UNAVAILABLE = Refused(
    503,
    "database_unavailable",
    "the central store did not answer in time; retry shortly",
    "error",
    headers={"Retry-After": "1"},
)


class VerificationService:
    """The partner directory as last read, the limits, the audit, and the steps."""

    def __init__(
        self,
        store: Store,
        audit: AuditTrail,
        ledger: QuotaLedger,
        audit_key: bytes,
        batch_max_items: int,
        repeats: RepeatGuard | None = None,
        directory_max_age: float = math.inf,
    ) -> None:
        self.store = store
        self.audit = audit
        self.ledger = ledger
        self.directory: PartnerDirectory | None = None
        self.directory_at = time.monotonic()  # when `directory` was last read
        self.directory_max_age = directory_max_age
        self.limiter = RateLimiter()
        self.repeats = repeats or RepeatGuard(limit=20)
        self._audit_key = audit_key
        self._batch_max_items = batch_max_items

    # ----------------------------------------------------------------------- the steps

    def _authenticate(self, credential: str) -> Partner:
        directory = self.directory
        if directory is None:  # not ready: /readyz says so, the pod gets no traffic
            raise Refused(503, "not_ready", "the partner directory is not loaded yet", "error")
        if time.monotonic() - self.directory_at > self.directory_max_age:
            # Fail closed: a directory that cannot be re-read might still hold a revoked key.
            raise Refused(
                503,
                "not_ready",
                "the partner directory could not be re-read lately; retry shortly",
                "error",
                headers={"Retry-After": "5"},
            )
        partner = directory.authenticate(credential)
        if partner is None:
            raise unauthenticated()
        return partner

    @staticmethod
    def _purpose(partner: Partner, purpose: str | None, audit: _Audit) -> str:
        if not purpose or not PURPOSE.fullmatch(purpose):
            raise Refused(
                422,
                "purpose_required",
                "X-Purpose header: a purpose code (A-Z, 0-9, _) is required",
                "invalid",
            )
        audit.purpose = purpose  # well formed: kept in the audit, refused or not
        if purpose not in partner.policy.purposes:
            allowed = ", ".join(sorted(partner.policy.purposes))
            raise Refused(
                403,
                "purpose_not_permitted",
                f"X-Purpose {purpose}: not among this partner's purposes ({allowed})",
                "denied",
            )
        return purpose

    def _rate(self, partner: Partner) -> None:
        wait = self.limiter.wait_needed(partner.partner_id, partner.policy)
        if wait > 0:
            metrics.PARTNER_REJECTIONS.labels(partner.partner_id, "rate_limit").inc()
            seconds = max(1, math.ceil(wait))
            raise Refused(
                429,
                "rate_limited",
                f"more than {partner.policy.rate_per_second:g} requests/s "
                f"(burst {partner.policy.burst}); retry in {seconds} s",
                "rate_limited",
                headers={"Retry-After": str(seconds)},
            )

    def _audit_room(self) -> None:
        if self.audit.full:
            raise Refused(
                503,
                "audit_unavailable",
                "the access audit cannot be written now; retry shortly",
                "error",
                headers={"Retry-After": "5"},
            )

    def _repeat(self, partner: Partner, pins: Sequence[str]) -> None:
        now = datetime.now(UTC)
        if not self.repeats.allow(partner.partner_id, pins, quota_day(now)):
            metrics.PARTNER_REJECTIONS.labels(partner.partner_id, "pin_repeats").inc()
            raise Refused(
                429,
                "too_many_questions_about_a_pin",
                "this PIN was verified too often today by this partner; it renews at "
                "midnight, Asia/Ho_Chi_Minh time",
                "repeat_limited",
                headers={"Retry-After": str(seconds_to_next_day(now))},
            )

    async def _quota(self, partner: Partner, items: int) -> None:
        now = datetime.now(UTC)
        allowed = await self.ledger.spend(
            partner.partner_id, items, partner.policy.daily_quota, quota_day(now)
        )
        if not allowed:
            metrics.PARTNER_REJECTIONS.labels(partner.partner_id, "daily_quota").inc()
            seconds = seconds_to_next_day(now)
            raise Refused(
                429,
                "daily_quota_exhausted",
                f"daily quota of {partner.policy.daily_quota} items used up; it renews at "
                "midnight, Asia/Ho_Chi_Minh time",
                "quota_exhausted",
                headers={"Retry-After": str(seconds)},
            )

    # ---------------------------------------------------------------------- endpoints

    async def _answer(self, audit: _Audit, steps: Callable[[], Awaitable[Reply]]) -> Reply:
        """Run a request's steps; a refusal, or PostgreSQL failing (503), is audited too."""
        try:
            return await steps()
        except Refused as refused:
            audit.refused(refused)
            return refused.reply()
        except Exception as exc:
            if not is_infrastructure_error(exc):
                audit.refused(Refused(500, "internal", "internal error", "error"))
                raise  # a bug: the front answers 500 and logs it
            log.warning("the central store failed a request (%s)", type(exc).__name__)
            audit.refused(_UNAVAILABLE)
            return _UNAVAILABLE.reply()

    async def verify(self, credential: str, purpose: str | None, body: Body) -> Reply:
        audit = _Audit(self, "verify", time.perf_counter())

        async def steps() -> Reply:
            partner = audit.partner = self._authenticate(credential)
            self._rate(partner)
            audit.purpose = self._purpose(partner, purpose, audit)
            try:
                request = VerifyRequest.model_validate_json(await _read(body))
            except ValidationError as exc:
                raise invalid_body(exc) from None
            audit.pins = [request.pin]
            self._audit_room()
            self._repeat(partner, audit.pins)
            await self._quota(partner, 1)
            answer, result = compare(request, await self.store.read(request.pin))
            _items("verify", result).inc()
            audit.answered(200, [result])
            return Reply(200, answer.model_dump_json().encode())

        return await self._answer(audit, steps)

    async def verify_batch(self, credential: str, purpose: str | None, body: Body) -> Reply:
        audit = _Audit(self, "verify_batch", time.perf_counter())

        async def steps() -> Reply:
            partner = audit.partner = self._authenticate(credential)
            self._rate(partner)
            audit.purpose = self._purpose(partner, purpose, audit)
            batch = self._batch(await _read(body))
            audit.pins = [item.pin for item in batch.items]
            self._audit_room()
            self._repeat(partner, audit.pins)
            await self._quota(partner, len(batch.items))
            records = await self.store.read_many(sorted({item.pin for item in batch.items}))
            answers: list[VerifyAnswer] = []
            results: list[ResultClass] = []
            for item in batch.items:
                answer, result = compare(item, records.get(item.pin))
                answers.append(answer)
                results.append(result)
            for result, count in Counter(results).items():
                _items("verify_batch", result).inc(count)
            audit.answered(200, results)
            return Reply(200, b'{"results":' + _ANSWERS.dump_json(answers) + b"}")

        return await self._answer(audit, steps)

    async def look_up(self, credential: str, purpose: str | None, pin: str) -> Reply:
        audit = _Audit(self, "citizen", time.perf_counter())

        async def steps() -> Reply:
            partner = audit.partner = self._authenticate(credential)
            self._rate(partner)
            audit.purpose = self._purpose(partner, purpose, audit)
            if not partner.policy.may_look_up:
                raise Refused(
                    403,
                    "lookup_not_permitted",
                    "this partner may verify (POST /v1/verify) but not look up citizens",
                    "denied",
                )
            try:
                checked_pin(pin)
            except (ValueError, PinError) as exc:
                raise Refused(422, "invalid_pin", f"pin: {exc}", "invalid") from None
            audit.pins = [pin]
            self._audit_room()
            await self._quota(partner, 1)
            record = await self.store.read(pin)
            if record is None:
                raise Refused(404, "not_found", "no citizen has this PIN", "not_found")
            _items("citizen", ResultClass.FOUND).inc()
            audit.answered(200, [ResultClass.FOUND])
            shown = view(record, partner.policy.lookup_fields)
            return Reply(200, shown.model_dump_json().encode())

        return await self._answer(audit, steps)

    def _batch(self, body: bytes) -> VerifyBatchRequest:
        try:
            batch = VerifyBatchRequest.model_validate_json(body)
        except ValidationError as exc:
            raise invalid_body(exc) from None
        if len(batch.items) > self._batch_max_items:
            raise Refused(
                422,
                "batch_too_large",
                f"items: {len(batch.items)} given, at most {self._batch_max_items} per batch",
                "invalid",
            )
        return batch

    def hash_pin(self, pin: str) -> bytes:
        return pin_hash(self._audit_key, pin)


@functools.cache
def _items(endpoint: str, result: ResultClass) -> PromCounter:
    """The metric's child, kept: labels() takes a lock and a lookup each time."""
    return metrics.VERIFY_ITEMS.labels(endpoint, result.value)


class _Audit:
    """The audit rows of one request, written whatever its outcome."""

    def __init__(self, service: VerificationService, endpoint: str, started: float) -> None:
        self._service = service
        self._endpoint = endpoint
        self._started = started
        self.partner: Partner | None = None
        self.purpose: str | None = None
        self.pins: list[str] = []

    def _rows(self, status: int, results: Sequence[str]) -> list[AuditRow]:
        at = datetime.now(UTC)
        latency_ms = (time.perf_counter() - self._started) * 1000.0
        request_id = secrets.token_hex(8)
        partner_id = self.partner.partner_id if self.partner is not None else None
        pins: Sequence[str | None] = self.pins or [None]
        hash_pin = self._service.hash_pin
        return [
            AuditRow(
                at,
                request_id,
                index,
                partner_id,
                self.purpose,
                self._endpoint,
                hash_pin(pin) if pin is not None else None,
                results[index] if index < len(results) else results[-1],
                status,
                latency_ms,
            )
            for index, pin in enumerate(pins)
        ]

    def answered(self, status: int, results: Sequence[ResultClass]) -> None:
        self._service.audit.record(self._rows(status, [r.value for r in results]))

    def refused(self, refused: Refused) -> None:
        rows = self._rows(refused.status, [refused.result])
        self._service.audit.record(rows, answered=False)


async def refresh_forever(
    service: VerificationService,
    load: Callable[[], Awaitable[PartnerDirectory]],
    interval: float,
    on_loaded: Callable[[], None] | None = None,
) -> None:
    """Re-read the partner directory every `interval`; keep the last one on failure
    (`on_loaded` runs after each read that succeeded: /readyz judges the directory's age)."""
    while True:
        try:
            service.directory = await load()
            service.directory_at = time.monotonic()
        except Exception as exc:  # the last directory stays; /readyz reports the age
            log.warning("partner directory not refreshed (%s)", type(exc).__name__)
        else:
            if on_loaded is not None:
                on_loaded()
        await asyncio.sleep(interval)
