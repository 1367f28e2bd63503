"""PostgreSQL: the read path's tables — the partner directory (`partners`, `partner_keys`,
`partner_audit`), daily quota leases (`partner_usage`), the access audit (`access_audit`)
and the citizen reads the verification service answers from.

Operators change the directory with the sync functions (the CLI), each change and its one
`partner_audit` row in one transaction; the service reads with the async ones.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from popsync.adapters.postgres.database import DirectoryRefusal
from popsync.verification.comparison import RECORD_COLUMNS, CitizenRecord
from popsync.verification.models import LookupField
from popsync.verification.partners import Partner, PartnerDirectory, PartnerKey, Policy

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- directory

_PARTNER_COLUMNS = (
    "partner_id, display_name, purposes, lookup_fields, rate_per_second, burst, daily_quota, "
    "created_at, revoked_at"
)
_ALL_PARTNERS = f"SELECT {_PARTNER_COLUMNS} FROM partners ORDER BY partner_id"  # noqa: S608
_ALL_KEYS = "SELECT key_id, partner_id, secret_hash, revoked_at FROM partner_keys"
_ADD_PARTNER = """
INSERT INTO partners (partner_id, display_name, purposes, lookup_fields, rate_per_second,
                      burst, daily_quota)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (partner_id) DO NOTHING
"""
_ADD_KEY = "INSERT INTO partner_keys (key_id, partner_id, secret_hash) VALUES (%s, %s, %s)"
_LOCK_PARTNER = "SELECT revoked_at FROM partners WHERE partner_id = %s FOR UPDATE"
_SET_POLICY = """
UPDATE partners SET purposes = %s, lookup_fields = %s, rate_per_second = %s, burst = %s,
                    daily_quota = %s
 WHERE partner_id = %s
"""
_REVOKE_PARTNER = "UPDATE partners SET revoked_at = now() WHERE partner_id = %s"
_REVOKE_ITS_KEYS = """
UPDATE partner_keys SET revoked_at = now() WHERE partner_id = %s AND revoked_at IS NULL
RETURNING key_id
"""
_AUDIT = """
INSERT INTO partner_audit (operator, action, partner_id, detail) VALUES (%s, %s, %s, %s)
"""


def _partner(row: Sequence[Any]) -> Partner:
    policy = Policy(
        purposes=frozenset(row[2]),
        lookup_fields=frozenset(LookupField(name) for name in row[3]),
        rate_per_second=float(row[4]),
        burst=int(row[5]),
        daily_quota=int(row[6]),
    )
    return Partner(row[0], row[1], policy, row[7], row[8])


def _key(row: Sequence[Any]) -> PartnerKey:
    return PartnerKey(row[0], row[1], bytes(row[2]), row[3])


_PARTNERS_IN_FORCE = f"SELECT {_PARTNER_COLUMNS} FROM partners WHERE revoked_at IS NULL"  # noqa: S608
_KEYS_IN_FORCE = """
SELECT k.key_id, k.partner_id, k.secret_hash, k.revoked_at
  FROM partner_keys k JOIN partners p USING (partner_id)
 WHERE k.revoked_at IS NULL AND p.revoked_at IS NULL
"""


async def load_directory(conn: psycopg.AsyncConnection[Any]) -> PartnerDirectory:
    """The partners and keys in force (a revoked one is then unknown: the same 401). A row
    this version cannot read (a look-up field it does not know, from a newer release) is
    left out and logged, so that one row cannot stop every refresh."""
    async with conn.cursor() as cur:
        await cur.execute(_PARTNERS_IN_FORCE)
        partners = [p for p in map(_readable_partner, await cur.fetchall()) if p is not None]
        await cur.execute(_KEYS_IN_FORCE)
        keys = [_key(row) for row in await cur.fetchall()]
    return PartnerDirectory(partners, keys)


def _readable_partner(row: Sequence[Any]) -> Partner | None:
    try:
        return _partner(row)
    except (ValueError, TypeError) as exc:
        log.error("partner %s left out of the directory: %s", row[0], exc)
        return None


def list_partners(conn: psycopg.Connection[Any]) -> list[tuple[Partner, list[PartnerKey]]]:
    partners = [_partner(row) for row in conn.execute(_ALL_PARTNERS)]
    keys = [_key(row) for row in conn.execute(_ALL_KEYS + " ORDER BY created_at")]
    return [(p, [k for k in keys if k.partner_id == p.partner_id]) for p in partners]


def _policy_detail(policy: Policy) -> dict[str, Any]:
    return {
        "purposes": sorted(policy.purposes),
        "lookup_fields": sorted(f.value for f in policy.lookup_fields),
        "rate_per_second": policy.rate_per_second,
        "burst": policy.burst,
        "daily_quota": policy.daily_quota,
    }


def _policy_values(policy: Policy) -> tuple[Any, ...]:
    detail = _policy_detail(policy)
    return tuple(detail.values())


def _audit(
    conn: psycopg.Connection[Any], operator: str, action: str, partner_id: str, detail: Any
) -> None:
    conn.execute(_AUDIT, (operator, action, partner_id, json.dumps(detail)))


def add_partner(
    conn: psycopg.Connection[Any],
    partner_id: str,
    display_name: str,
    policy: Policy,
    key: PartnerKey,
    operator: str,
) -> None:
    """Register a partner with its first key; refused if the id is taken."""
    with conn.transaction():
        row = (partner_id, display_name, *_policy_values(policy))
        if conn.execute(_ADD_PARTNER, row).rowcount != 1:
            raise DirectoryRefusal(f"partner {partner_id!r} exists already")
        conn.execute(_ADD_KEY, (key.key_id, partner_id, key.secret_hash))
        detail = {"display_name": display_name, "key_id": key.key_id, **_policy_detail(policy)}
        _audit(conn, operator, "partner.add", partner_id, detail)


def _lock_active(conn: psycopg.Connection[Any], partner_id: str) -> None:
    row = conn.execute(_LOCK_PARTNER, (partner_id,)).fetchone()
    if row is None:
        raise DirectoryRefusal(f"no partner {partner_id!r} (see `popsync partners list`)")
    if row[0] is not None:
        raise DirectoryRefusal(f"partner {partner_id!r} was revoked at {row[0]:%Y-%m-%dT%H:%M:%SZ}")


def find_partner(conn: psycopg.Connection[Any], partner_id: str) -> Partner | None:
    query = f"SELECT {_PARTNER_COLUMNS} FROM partners WHERE partner_id = %s"  # noqa: S608
    row = conn.execute(query, (partner_id,)).fetchone()
    return None if row is None else _partner(row)


def set_policy(
    conn: psycopg.Connection[Any], partner_id: str, policy: Policy, operator: str
) -> None:
    with conn.transaction():
        _lock_active(conn, partner_id)
        conn.execute(_SET_POLICY, (*_policy_values(policy), partner_id))
        _audit(conn, operator, "partner.policy", partner_id, _policy_detail(policy))


def add_key(conn: psycopg.Connection[Any], key: PartnerKey, operator: str) -> None:
    """Another key for a partner in force (rotation: revoke the old one after)."""
    with conn.transaction():
        _lock_active(conn, key.partner_id)
        conn.execute(_ADD_KEY, (key.key_id, key.partner_id, key.secret_hash))
        _audit(conn, operator, "key.add", key.partner_id, {"key_id": key.key_id})


def revoke_key(conn: psycopg.Connection[Any], partner_id: str, key_id: str, operator: str) -> None:
    """Revoke one key of a partner (the last step of a rotation)."""
    with conn.transaction():
        _lock_active(conn, partner_id)
        revoked = conn.execute(
            "UPDATE partner_keys SET revoked_at = now() "
            "WHERE key_id = %s AND partner_id = %s AND revoked_at IS NULL",
            (key_id, partner_id),
        ).rowcount
        if revoked != 1:
            raise DirectoryRefusal(f"partner {partner_id!r} has no key {key_id!r} in force")
        _audit(conn, operator, "key.revoke", partner_id, {"key_id": key_id})


def revoke_partner(conn: psycopg.Connection[Any], partner_id: str, operator: str) -> list[str]:
    """Revoke the partner and each of its keys in force, from now; their key ids."""
    with conn.transaction():
        _lock_active(conn, partner_id)
        conn.execute(_REVOKE_PARTNER, (partner_id,))
        keys = sorted(row[0] for row in conn.execute(_REVOKE_ITS_KEYS, (partner_id,)))
        _audit(conn, operator, "partner.revoke", partner_id, {"keys_revoked": keys})
    return keys


# ------------------------------------------------------------------------------ quotas

# A lease: the day's row is made by the first one; then one UPDATE takes what is left of
# the quota, at most `want`, under the row's lock, so processes leasing at once never take
# more than the quota between them.
_USAGE_ROW = """
INSERT INTO partner_usage (partner_id, day, used) VALUES (%(partner)s, %(day)s, 0)
ON CONFLICT (partner_id, day) DO NOTHING
"""
_LEASE = """
WITH before AS (
    SELECT used FROM partner_usage WHERE partner_id = %(partner)s AND day = %(day)s FOR UPDATE
)
UPDATE partner_usage AS u
   SET used = u.used + LEAST(%(want)s, GREATEST(%(quota)s - before.used, 0))
  FROM before
 WHERE u.partner_id = %(partner)s AND u.day = %(day)s
RETURNING LEAST(%(want)s, GREATEST(%(quota)s - before.used, 0))
"""


async def lease_quota(
    conn: psycopg.AsyncConnection[Any],
    partner_id: str,
    day: datetime.date,
    want: int,
    quota: int,
) -> int:
    """Items granted (0..want) of `partner_id`'s quota for `day`, now counted as used."""
    values = {"partner": partner_id, "day": day, "want": want, "quota": quota}
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(_USAGE_ROW, values)
        await cur.execute(_LEASE, values)
        row = await cur.fetchone()
    return 0 if row is None else int(row[0])


def usage(conn: psycopg.Connection[Any], partner_id: str, day: datetime.date) -> int:
    row = conn.execute(
        "SELECT used FROM partner_usage WHERE partner_id = %s AND day = %s", (partner_id, day)
    ).fetchone()
    return 0 if row is None else int(row[0])


# ------------------------------------------------------------------------- access audit

AUDIT_COLUMNS = (
    "at",
    "request_id",
    "item",
    "partner_id",
    "purpose",
    "endpoint",
    "pin_hash",
    "result",
    "status",
    "latency_ms",
)


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: datetime.datetime
    request_id: str
    item: int
    partner_id: str | None
    purpose: str | None
    endpoint: str
    pin_hash: bytes | None
    result: str
    status: int
    latency_ms: float


# COPY's text format, escaped (`\\N` is NULL). A request's rows (one per batch item) share
# all but the item, the PIN hash and the result: those columns are formatted once per
# request. psycopg's binary write_row cost 4.6 µs of CPU a row, formatting each row whole
# 4.2; this about 1, and a batch of 1,000 verifications writes 1,000 rows.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str | None) -> str:
    return "\\N" if value is None else value.translate(_ESCAPES)


def audit_lines(rows: Sequence[AuditRow]) -> str:
    """The rows in COPY's text format, one line each."""
    lines: list[str] = []
    shared: tuple[object, ...] = ()
    head = middle = tail = ""
    for row in rows:
        key = (row.request_id, row.at, row.partner_id, row.purpose, row.endpoint, row.status)
        if key != shared:
            shared = key
            head = f"{row.at.isoformat()}\t{_text(row.request_id)}\t"
            middle = f"\t{_text(row.partner_id)}\t{_text(row.purpose)}\t{_text(row.endpoint)}\t"
            tail = f"\t{row.status}\t"
        pin_hash = "\\N" if row.pin_hash is None else "\\\\x" + row.pin_hash.hex()
        lines.append(
            f"{head}{row.item}{middle}{pin_hash}\t{_text(row.result)}{tail}{row.latency_ms!r}\n"
        )
    return "".join(lines)


async def append_audit(conn: psycopg.AsyncConnection[Any], rows: Sequence[AuditRow]) -> None:
    """COPY `rows` into access_audit: one round trip for the lot."""
    query = f"COPY access_audit ({', '.join(AUDIT_COLUMNS)}) FROM STDIN"
    async with conn.cursor() as cur, cur.copy(query) as copy:
        await copy.write(audit_lines(rows).encode())


@dataclass(frozen=True, slots=True)
class Access:
    """One audit row as `popsync audit citizen` shows it."""

    at: datetime.datetime
    partner_id: str | None
    purpose: str | None
    endpoint: str
    result: str
    status: int


def accesses(
    conn: psycopg.Connection[Any], pin_hash: bytes, since: datetime.datetime | None
) -> list[Access]:
    rows = conn.execute(
        "SELECT at, partner_id, purpose, endpoint, result, status FROM access_audit "
        "WHERE pin_hash = %s AND (%s::timestamptz IS NULL OR at >= %s) ORDER BY at",
        (pin_hash, since, since),
    ).fetchall()
    return [Access(*row) for row in rows]


# ----------------------------------------------------------------------- citizen reads

_COLUMNS = ", ".join(RECORD_COLUMNS)
_ONE = f"SELECT {_COLUMNS} FROM citizens WHERE pin = %s"  # noqa: S608
_MANY = f"SELECT {_COLUMNS} FROM citizens WHERE pin = ANY(%s)"  # noqa: S608


async def read_citizen(conn: psycopg.AsyncConnection[Any], pin: str) -> CitizenRecord | None:
    async with conn.cursor() as cur:
        await cur.execute(_ONE, (pin,), prepare=True)
        row = await cur.fetchone()
    return None if row is None else CitizenRecord(*row)


async def read_citizens(
    conn: psycopg.AsyncConnection[Any], pins: Sequence[str]
) -> dict[str, CitizenRecord]:
    """The citizens among `pins` that exist, by PIN (one `= ANY` query)."""
    async with conn.cursor() as cur:
        await cur.execute(_MANY, (list(pins),), prepare=True)
        rows = await cur.fetchall()
    return {row[0]: CitizenRecord(*row) for row in rows}
