"""Partners: who may ask the verification service, for which purposes, to see what.

An API key is `psk_<key_id>.<secret>`: the key id (public, 12 hex digits) finds the key,
the secret (32 random bytes, base64url) proves it. Only SHA-256(secret) is stored: the
secret has 256 bits of entropy, so a slow password hash would add latency, not strength.

Authentication does the same work whatever is wrong with a credential (malformed,
unknown key, wrong secret, revoked key or partner): one SHA-256 and one constant-time
comparison of 32 bytes, against a decoy hash when there is nothing real to compare
with, so the time of a 401 does not tell which it was.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from popsync.verification.models import LookupField

KEY_PREFIX = "psk_"
_KEY_ID_HEX = 12
_SECRET_BYTES = 32
_CREDENTIAL = re.compile(r"^psk_([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")
PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
PURPOSE = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")


@dataclass(frozen=True, slots=True)
class Policy:
    """What a partner may do: state these purposes; look up these fields (none: it may
    only verify); at this rate (requests per second, with a burst) and this many verified
    or looked-up items a day."""

    purposes: frozenset[str]
    lookup_fields: frozenset[LookupField]
    rate_per_second: float
    burst: int
    daily_quota: int

    @property
    def may_look_up(self) -> bool:
        return bool(self.lookup_fields)


@dataclass(frozen=True, slots=True)
class Partner:
    partner_id: str
    display_name: str
    policy: Policy
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PartnerKey:
    key_id: str
    partner_id: str
    secret_hash: bytes
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key: `credential` is shown once to the operator, `key` is what is stored."""

    key: PartnerKey
    credential: str = field(repr=False)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def issue_key(partner_id: str) -> IssuedKey:
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    return IssuedKey(
        PartnerKey(key_id, partner_id, hash_secret(secret)), f"{KEY_PREFIX}{key_id}.{secret}"
    )


def bearer_credential(authorization: str | None) -> str:
    """The credential of an `Authorization: Bearer …` header ('' if there is none)."""
    if authorization is None:
        return ""
    scheme, _, credential = authorization.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


class PartnerDirectory:
    """The partners and keys in force, as last read; answers `authenticate` from memory."""

    def __init__(self, partners: Iterable[Partner], keys: Iterable[PartnerKey]) -> None:
        self.partners: Mapping[str, Partner] = {p.partner_id: p for p in partners}
        self._keys: Mapping[str, PartnerKey] = {k.key_id: k for k in keys}
        # Compared against when there is no real hash: same work, never equal to a
        # digest of anything (a fresh random value per directory).
        self._decoy = secrets.token_bytes(32)

    def authenticate(self, credential: str) -> Partner | None:
        """The partner whose key in force `credential` is; None for anything else, in
        the same time (see the module's docstring)."""
        found = _CREDENTIAL.fullmatch(credential)
        key_id, secret = found.groups() if found else ("", "x" * 43)
        key = self._keys.get(key_id)
        expected = key.secret_hash if key is not None else self._decoy
        equal = hmac.compare_digest(hash_secret(secret), expected)
        if not (equal and found and key is not None and key.revoked_at is None):
            return None
        partner = self.partners.get(key.partner_id)
        if partner is None or partner.revoked_at is not None:
            return None
        return partner
