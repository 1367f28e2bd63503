"""PostgreSQL: the publisher directory (tables `publishers`, `publisher_keys`,
`publisher_audit`).

The validator reads every key with its publisher (`PostgresPublisherDirectory`, async);
operators change the directory (sync functions, for the CLI), each change and its one audit
row in one transaction. Entries are checked before they are written (`publisher_entry`,
`public_key_bytes`): a publisher may only be given provinces that exist and event types its
kind is the authority for.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from popsync.adapters.postgres.database import Database, DirectoryRefusal
from popsync.contract import models as m
from popsync.domain import provinces
from popsync.domain.authority import EVENT_AUTHORITY
from popsync.domain.provinces import UnknownProvinceCode, resolve_province
from popsync.trust.identity import Publisher, PublisherKey

PUBLIC_KEY_BYTES = 32  # a raw Ed25519 public key
# Ids travel in headers and audit rows and show in terminals: short, plain ASCII.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KINDS = tuple(kind for kind in m.SourceRegistry if kind is not m.SourceRegistry.UNKNOWN)
_REGISTRIES = frozenset(kind.value for kind in m.SourceRegistry)
_EVENT_TYPES = frozenset(t.value for t in m.EventType)


class InvalidEntry(ValueError):
    """What was given cannot go into the directory (a usage error); one line, no secrets."""


# ----------------------------------------------------------------------------- validation


def checked_id(text: str, what: str) -> str:
    if not _ID.fullmatch(text):
        raise InvalidEntry(
            f"{what} {text!r}: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return text


def authorized_types(kind: m.SourceRegistry) -> frozenset[m.EventType]:
    """The event types `kind` is the authority for: a publisher's default."""
    return frozenset(t for t, registries in EVENT_AUTHORITY.items() if kind in registries)


def scope_code(code: str) -> str:
    """The 2-digit admin code of a known province code ("079" -> "79"); legacy codes kept."""
    try:
        given = resolve_province(code).given_code
    except UnknownProvinceCode:
        raise InvalidEntry(f"unknown province code {code!r}") from None
    return provinces.admin_code(given) or given


def publisher_entry(
    publisher_id: str,
    kind: m.SourceRegistry,
    provinces: Iterable[str],
    event_types: Iterable[m.EventType] = (),
) -> Publisher:
    """A checked publisher: known provinces, and only types its kind is the authority for
    (all of them when none are given)."""
    allowed = authorized_types(kind)
    if not allowed:
        raise InvalidEntry(f"{kind.value} is the authority for no event type")
    codes = frozenset(scope_code(code) for code in provinces)
    if not codes:
        raise InvalidEntry("a publisher speaks for at least one province (--province)")
    types = frozenset(event_types) or allowed
    refused = sorted(types - allowed)
    if refused:
        raise InvalidEntry(
            f"{kind.value} is not the authority for {', '.join(refused)}; "
            f"it may publish {', '.join(sorted(allowed))}"
        )
    return Publisher(checked_id(publisher_id, "publisher id"), kind, codes, types)


def public_key_bytes(key: bytes) -> bytes:
    if len(key) != PUBLIC_KEY_BYTES:
        raise InvalidEntry(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, this one {len(key)}"
        )
    return key


def fingerprint(public_key: bytes) -> str:
    """A short name for a public key in audit rows and output: SHA-256, 16 hex digits."""
    return hashlib.sha256(public_key).hexdigest()[:16]


# ------------------------------------------------------------------------------- reading

_KEYS = """
    SELECT k.key_id, k.publisher_id, k.public_key, k.valid_from, k.valid_until, k.revoked_at,
           p.kind, p.provinces, p.event_types, p.revoked_at
    FROM publisher_keys k JOIN publishers p USING (publisher_id)
"""
_PUBLISHERS = "SELECT publisher_id, kind, provinces, event_types, revoked_at, created_at "
_PUBLISHER_KEYS = """
    SELECT key_id, publisher_id, public_key, valid_from, valid_until, revoked_at
    FROM publisher_keys WHERE publisher_id = ANY(%s) ORDER BY valid_from, key_id
"""


def _publisher(
    publisher_id: str,
    kind: str,
    provinces: Sequence[str],
    event_types: Sequence[str],
    revoked_at: datetime | None,
) -> Publisher:
    # Names a newer popsync wrote are not refused: an unknown kind is UNKNOWN, and an
    # unknown event type is one this version cannot receive anyway.
    registry = m.SourceRegistry(kind) if kind in _REGISTRIES else m.SourceRegistry.UNKNOWN
    types = frozenset(m.EventType(t) for t in event_types if t in _EVENT_TYPES)
    return Publisher(publisher_id, registry, frozenset(provinces), types, revoked_at)


def _key(row: Sequence[Any]) -> PublisherKey:
    key_id, publisher_id, public_key, valid_from, valid_until, revoked_at = row[:6]
    return PublisherKey(
        key_id, publisher_id, bytes(public_key), valid_from, valid_until, revoked_at
    )


class PostgresPublisherDirectory:
    """`popsync.trust.identity.PublisherDirectory` on the worker's database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def keys(self) -> dict[str, tuple[PublisherKey, Publisher]]:
        """Every key of every publisher, revoked and expired ones too: the validator judges
        them at the event's time, and tells a revoked key from an unknown one."""
        async with self._db.transaction() as cur:
            await cur.execute(_KEYS)
            rows = await cur.fetchall()
        publishers: dict[str, Publisher] = {}
        found: dict[str, tuple[PublisherKey, Publisher]] = {}
        for row in rows:
            key = _key(row)
            if key.publisher_id not in publishers:
                publishers[key.publisher_id] = _publisher(key.publisher_id, *row[6:])
            found[key.key_id] = (key, publishers[key.publisher_id])
        return found


@dataclass(frozen=True)
class PublisherEntry:
    """A publisher as operators see it: with when it was added and all its keys."""

    publisher: Publisher
    created_at: datetime
    keys: tuple[PublisherKey, ...]


def _entries(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> list[PublisherEntry]:
    keys: dict[str, list[PublisherKey]] = {row[0]: [] for row in rows}
    for row in conn.execute(_PUBLISHER_KEYS, (list(keys),)).fetchall():
        keys[row[1]].append(_key(row))
    return [PublisherEntry(_publisher(*row[:5]), row[5], tuple(keys[row[0]])) for row in rows]


def list_publishers(conn: psycopg.Connection[Any]) -> list[PublisherEntry]:
    """Every publisher with its keys, by id."""
    rows = conn.execute(_PUBLISHERS + "FROM publishers ORDER BY publisher_id").fetchall()
    return _entries(conn, rows)


def find_publisher(conn: psycopg.Connection[Any], publisher_id: str) -> PublisherEntry | None:
    rows = conn.execute(
        _PUBLISHERS + "FROM publishers WHERE publisher_id = %s", (publisher_id,)
    ).fetchall()
    return next(iter(_entries(conn, rows)), None)


# ------------------------------------------------------------------------------- changes

_AUDIT = """
    INSERT INTO publisher_audit (operator, action, publisher_id, key_id, detail)
    VALUES (%s, %s, %s, %s, %s)
"""
_LOCK_PUBLISHER = "SELECT revoked_at FROM publishers WHERE publisher_id = %s FOR UPDATE"
_ADD_PUBLISHER = """
    INSERT INTO publishers (publisher_id, kind, provinces, event_types) VALUES (%s, %s, %s, %s)
    ON CONFLICT (publisher_id) DO NOTHING
"""
_REVOKE_PUBLISHER = "UPDATE publishers SET revoked_at = now() WHERE publisher_id = %s"
_REVOKE_ITS_KEYS = """
    UPDATE publisher_keys SET revoked_at = now()
    WHERE publisher_id = %s AND revoked_at IS NULL RETURNING key_id
"""
_ADD_KEY = """
    INSERT INTO publisher_keys (key_id, publisher_id, public_key, valid_from, valid_until)
    VALUES (%s, %s, %s, coalesce(%s, now()), %s)
    ON CONFLICT (key_id) DO NOTHING
    RETURNING key_id, publisher_id, public_key, valid_from, valid_until, revoked_at
"""
# Rotation only ever ends an old key sooner, never later; keys already over are left alone.
_END_OLD_KEYS = """
    UPDATE publisher_keys SET valid_until = least(coalesce(valid_until, %(until)s), %(until)s)
    WHERE publisher_id = %(publisher)s AND key_id <> %(new)s AND revoked_at IS NULL
      AND (valid_until IS NULL OR valid_until > now()) AND valid_from < %(until)s
"""
_OLD_KEYS = """
    SELECT key_id, publisher_id, public_key, valid_from, valid_until, revoked_at
    FROM publisher_keys
    WHERE publisher_id = %s AND key_id <> %s AND revoked_at IS NULL
      AND (valid_until IS NULL OR valid_until > now())
    ORDER BY valid_from, key_id
"""
_REVOKE_KEY = """
    UPDATE publisher_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL
    RETURNING publisher_id
"""


@dataclass(frozen=True)
class NewKey:
    """A public key to register; `valid_from` None means from now (the database's clock)."""

    key_id: str
    public_key: bytes
    valid_from: datetime | None = None
    valid_until: datetime | None = None


def _audit(
    conn: psycopg.Connection[Any],
    operator: str,
    action: str,
    publisher_id: str,
    key_id: str | None,
    detail: dict[str, Any],
) -> None:
    conn.execute(_AUDIT, (operator, action, publisher_id, key_id, json.dumps(detail)))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def add_publisher(conn: psycopg.Connection[Any], publisher: Publisher, operator: str) -> None:
    """Register `publisher` (from `publisher_entry`); refused if its id is taken."""
    provinces = sorted(publisher.provinces)
    types = sorted(t.value for t in publisher.event_types)
    with conn.transaction():
        row = (publisher.publisher_id, publisher.kind.value, provinces, types)
        if conn.execute(_ADD_PUBLISHER, row).rowcount != 1:
            raise DirectoryRefusal(f"publisher {publisher.publisher_id!r} exists already")
        detail = {"kind": publisher.kind.value, "provinces": provinces, "event_types": types}
        _audit(conn, operator, "publisher.add", publisher.publisher_id, None, detail)


def _lock_active(conn: psycopg.Connection[Any], publisher_id: str) -> None:
    """Lock the publisher's row for this transaction; refused if unknown or revoked."""
    row = conn.execute(_LOCK_PUBLISHER, (publisher_id,)).fetchone()
    if row is None:
        raise DirectoryRefusal(f"no publisher {publisher_id!r} (see `popsync publishers list`)")
    if row[0] is not None:
        raise DirectoryRefusal(f"publisher {publisher_id!r} was revoked at {_iso(row[0])}")


def revoke_publisher(conn: psycopg.Connection[Any], publisher_id: str, operator: str) -> list[str]:
    """Revoke the publisher and every key of it not revoked yet, from now; their ids."""
    with conn.transaction():
        _lock_active(conn, publisher_id)
        conn.execute(_REVOKE_PUBLISHER, (publisher_id,))
        keys = sorted(row[0] for row in conn.execute(_REVOKE_ITS_KEYS, (publisher_id,)))
        _audit(conn, operator, "publisher.revoke", publisher_id, None, {"keys_revoked": keys})
    return keys


def _insert_key(conn: psycopg.Connection[Any], publisher_id: str, key: NewKey) -> PublisherKey:
    public_key = public_key_bytes(key.public_key)
    values = (key.key_id, publisher_id, public_key, key.valid_from, key.valid_until)
    row = conn.execute(_ADD_KEY, values).fetchone()
    if row is None:
        raise DirectoryRefusal(f"key id {key.key_id!r} is taken")
    return _key(row)


def _key_detail(key: PublisherKey) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint(key.public_key),
        "valid_from": _iso(key.valid_from),
        "valid_until": _iso(key.valid_until),
    }


def add_key(
    conn: psycopg.Connection[Any], publisher_id: str, key: NewKey, operator: str
) -> PublisherKey:
    """Register a public key of an active publisher."""
    with conn.transaction():
        _lock_active(conn, publisher_id)
        added = _insert_key(conn, publisher_id, key)
        _audit(conn, operator, "key.add", publisher_id, added.key_id, _key_detail(added))
    return added


@dataclass(frozen=True)
class Rotation:
    new: PublisherKey
    old: tuple[PublisherKey, ...]  # the keys still in their window, as they now end


def rotate(
    conn: psycopg.Connection[Any],
    publisher_id: str,
    key: NewKey,
    operator: str,
    old_valid_until: datetime | None = None,
) -> Rotation:
    """Register `key` beside the publisher's keys. These stay valid until their own window
    ends, or `old_valid_until` if that is sooner."""
    with conn.transaction():
        _lock_active(conn, publisher_id)
        new = _insert_key(conn, publisher_id, key)
        if old_valid_until is not None:
            ending = {"until": old_valid_until, "publisher": publisher_id, "new": new.key_id}
            conn.execute(_END_OLD_KEYS, ending)
        old = tuple(_key(row) for row in conn.execute(_OLD_KEYS, (publisher_id, new.key_id)))
        detail = _key_detail(new) | {
            "old_keys": {k.key_id: _iso(k.valid_until) for k in old},
            "old_valid_until": _iso(old_valid_until),
        }
        _audit(conn, operator, "key.rotate", publisher_id, new.key_id, detail)
    return Rotation(new, old)


def revoke_key(conn: psycopg.Connection[Any], key_id: str, operator: str) -> str:
    """Revoke one key from now; its publisher's id. Refused if unknown or revoked already."""
    with conn.transaction():
        row = conn.execute(_REVOKE_KEY, (key_id,)).fetchone()
        if row is None:
            known = conn.execute(
                "SELECT revoked_at FROM publisher_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
            if known is None:
                raise DirectoryRefusal(f"no key {key_id!r} (see `popsync publishers show ID`)")
            raise DirectoryRefusal(f"key {key_id!r} was revoked at {_iso(known[0])}")
        _audit(conn, operator, "key.revoke", row[0], key_id, {})
    return str(row[0])
