"""`popsync partners …` and `popsync audit citizen PIN`: the partner directory and the
access audit, by operators.

A partner (a ministry, a bank, a public service) calls the verification service
(`popsync serve`) with an API key; its policy says why it may ask (purpose codes), what a
look-up may show it (none: it may only verify), and how much (rate, burst, daily quota).
Policies are rows in PostgreSQL; every change writes one `partner_audit` row. An API key
is printed once, when made; only its hash is stored, so a lost key is replaced
(`partners key`), never recovered.

Exit codes (`popsync.ops.failures`): 0 done; 1 refused by the directory as it stands
(unknown, revoked or taken id); 2 usage (a bad id, purpose, field or limit, no audit key).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from popsync.adapters.postgres import partners as directory
from popsync.adapters.postgres.database import DirectoryRefusal, operator_connection
from popsync.domain.pin import PinError, mask_pin, parse_pin
from popsync.ops import failures
from popsync.ops.review import ReviewError, operator_name
from popsync.settings import Settings
from popsync.verification.audit import MIN_KEY_CHARS, pin_hash
from popsync.verification.limits import quota_day
from popsync.verification.models import LookupField
from popsync.verification.partners import (
    PARTNER_ID,
    PURPOSE,
    IssuedKey,
    Partner,
    PartnerKey,
    Policy,
    issue_key,
)

LOOKUP_FIELDS = tuple(field.value for field in LookupField)
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100
DEFAULT_DAILY_QUOTA = 100_000
_SHOWN_ONCE = "(shown once: store it now; only its hash is kept)"


@dataclass(frozen=True)
class PolicyRequest:
    """A policy as given on the command line; None: keep the current value."""

    purposes: Sequence[str] | None = None
    lookup_fields: Sequence[str] | None = None
    rate_per_second: float | None = None
    burst: int | None = None
    daily_quota: int | None = None


def _checked_id(partner_id: str) -> str:
    if not PARTNER_ID.fullmatch(partner_id):
        raise failures.UsageError(
            f"partner id {partner_id!r}: 2-63 of a-z 0-9 -, starting with a letter or digit"
        )
    return partner_id


def _purposes(given: Sequence[str]) -> frozenset[str]:
    purposes = frozenset(p.strip().upper() for p in given)
    bad = sorted(p for p in purposes if not PURPOSE.fullmatch(p))
    if bad or not purposes:
        raise failures.UsageError(
            f"purpose {bad[0] if bad else '(none)'!r}: give at least one purpose code, "
            "2-32 of A-Z 0-9 _ starting with a letter (e.g. KYC, SOCIAL_INSURANCE)"
        )
    return purposes


def _fields(given: Sequence[str]) -> frozenset[LookupField]:
    names = {name.strip() for item in given for name in item.split(",") if name.strip()}
    unknown = sorted(names - set(LOOKUP_FIELDS))
    if unknown:
        raise failures.UsageError(
            f"look-up field {unknown[0]!r} unknown; choose from {', '.join(LOOKUP_FIELDS)}"
        )
    return frozenset(LookupField(name) for name in names)


def policy_of(request: PolicyRequest, current: Policy | None = None) -> Policy:
    """The policy `request` asks for, over `current` (or the defaults)."""
    base = current or Policy(frozenset(), frozenset(), DEFAULT_RATE, DEFAULT_BURST, 0)
    policy = Policy(
        purposes=base.purposes if request.purposes is None else _purposes(request.purposes),
        lookup_fields=(
            base.lookup_fields if request.lookup_fields is None else _fields(request.lookup_fields)
        ),
        rate_per_second=base.rate_per_second
        if request.rate_per_second is None
        else request.rate_per_second,
        burst=base.burst if request.burst is None else request.burst,
        daily_quota=(
            (DEFAULT_DAILY_QUOTA if current is None else base.daily_quota)
            if request.daily_quota is None
            else request.daily_quota
        ),
    )
    if not policy.purposes:
        raise failures.UsageError("give at least one --purpose")
    if not (0 < policy.rate_per_second < math.inf) or policy.burst < 1 or policy.daily_quota < 0:
        raise failures.UsageError("--rate must be > 0, --burst >= 1, --daily-quota >= 0")
    return policy


def describe_policy(policy: Policy) -> str:
    fields = ",".join(sorted(f.value for f in policy.lookup_fields)) or "none (verify only)"
    return (
        f"purposes {','.join(sorted(policy.purposes))}  look-up fields {fields}  "
        f"{policy.rate_per_second:g} requests/s (burst {policy.burst})  "
        f"{policy.daily_quota} items/day"
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_partner(partner: Partner, keys: Sequence[PartnerKey], used_today: int) -> str:
    state = "active" if partner.revoked_at is None else f"revoked {_when(partner.revoked_at)}"
    live = [k.key_id for k in keys if k.revoked_at is None]
    return (
        f"{partner.partner_id}  {state}  {describe_policy(partner.policy)}  "
        f"used today {used_today}  keys in force {','.join(live) or 'none'}  "
        f"name {partner.display_name!r}"
    )


def _judged(action: Callable[[], int], err: TextIO) -> int:
    return failures.judged(action, err, usage=(ReviewError,))


def _show_once(issued: IssuedKey, out: TextIO) -> None:
    print(f"api key: {issued.credential}", file=out)
    print(_SHOWN_ONCE, file=out)


def add_partner(
    settings: Settings,
    partner_id: str,
    display_name: str | None,
    request: PolicyRequest,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        policy = policy_of(request)
        issued = issue_key(_checked_id(partner_id))
        with operator_connection(settings.postgres) as conn:
            directory.add_partner(
                conn, partner_id, display_name or partner_id, policy, issued.key, who
            )
        print(f"partner {partner_id} added: {describe_policy(policy)}", file=out)
        _show_once(issued, out)
        return failures.EXIT_OK

    return _judged(run, err)


def list_partners(settings: Settings, *, out: TextIO) -> int:
    today = quota_day(datetime.now(UTC))
    with operator_connection(settings.postgres) as conn:
        entries = directory.list_partners(conn)
        for partner, keys in entries:
            used = directory.usage(conn, partner.partner_id, today)
            print(describe_partner(partner, keys, used), file=out)
    if not entries:
        print("no partners (add one: popsync partners add ID --purpose CODE)", file=out)
    return failures.EXIT_OK


def set_policy(
    settings: Settings,
    partner_id: str,
    request: PolicyRequest,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        with operator_connection(settings.postgres) as conn:
            current = directory.find_partner(conn, partner_id)
            if current is None:
                raise DirectoryRefusal(f"no partner {partner_id!r} (see `popsync partners list`)")
            policy = policy_of(request, current.policy)
            directory.set_policy(conn, partner_id, policy, who)
        print(f"partner {partner_id} policy: {describe_policy(policy)}", file=out)
        print(f"in force within {settings.serve.partner_refresh_seconds:g} s", file=out)
        return failures.EXIT_OK

    return _judged(run, err)


def new_key(
    settings: Settings, partner_id: str, operator: str | None, *, out: TextIO, err: TextIO
) -> int:
    def run() -> int:
        who = operator_name(operator)
        issued = issue_key(_checked_id(partner_id))
        with operator_connection(settings.postgres) as conn:
            directory.add_key(conn, issued.key, who)
        print(f"partner {partner_id}: new key {issued.key.key_id}", file=out)
        _show_once(issued, out)
        return failures.EXIT_OK

    return _judged(run, err)


def revoke_key(
    settings: Settings,
    partner_id: str,
    key_id: str,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        with operator_connection(settings.postgres) as conn:
            directory.revoke_key(conn, partner_id, key_id, who)
        print(f"partner {partner_id}: key {key_id} revoked", file=out)
        return failures.EXIT_OK

    return _judged(run, err)


def revoke_partner(
    settings: Settings, partner_id: str, operator: str | None, *, out: TextIO, err: TextIO
) -> int:
    def run() -> int:
        who = operator_name(operator)
        with operator_connection(settings.postgres) as conn:
            keys = directory.revoke_partner(conn, partner_id, who)
        print(
            f"partner {partner_id} revoked with its keys {','.join(keys) or '(none in force)'}; "
            f"refused within {settings.serve.partner_refresh_seconds:g} s",
            file=out,
        )
        return failures.EXIT_OK

    return _judged(run, err)


# --------------------------------------------------------------------------------- audit


def audit_citizen(settings: Settings, pin: str, since: datetime | None, *, out: TextIO) -> int:
    """Who asked about the citizen with `pin`, when, why and what they got."""
    try:
        pin = parse_pin(pin).value  # as the service hashed it: no spaces around
    except PinError as exc:
        raise failures.UsageError(f"PIN {mask_pin(pin)}: {exc}") from None
    key = settings.serve.audit_key
    if key is None or len(key.get_secret_value()) < MIN_KEY_CHARS:
        raise failures.UsageError(
            "POPSYNC_SERVE__AUDIT_KEY: not set (or too short); use the service's audit key"
        )
    with operator_connection(settings.postgres) as conn:
        rows = directory.accesses(conn, pin_hash(key.get_secret_value().encode(), pin), since)
    print(f"citizen {mask_pin(pin)}: {len(rows)} access(es) recorded", file=out)
    for row in rows:
        print(
            f"  {_when(row.at)}  {row.partner_id or '(no valid key)'}  "
            f"purpose {row.purpose or '-'}  {row.endpoint}  {row.result}  HTTP {row.status}",
            file=out,
        )
    return failures.EXIT_OK
