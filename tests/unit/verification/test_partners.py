"""Partners' API keys: `psk_<12 hex>.<43 base64url>`, only SHA-256 of the secret stored;
`PartnerDirectory.authenticate` answers None for every kind of failure, and does the same
work for each of them: one SHA-256 and one constant-time comparison of 32 bytes."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsync.verification import partners
from popsync.verification.models import LookupField
from popsync.verification.partners import (
    KEY_PREFIX,
    PARTNER_ID,
    PURPOSE,
    IssuedKey,
    Partner,
    PartnerDirectory,
    Policy,
    bearer_credential,
    hash_secret,
    issue_key,
)

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
POLICY = Policy(frozenset({"KYC"}), frozenset(), 10.0, 20, 1000)
BANK = Partner("bank-a", "Bank A", POLICY, NOW)
MINISTRY = Partner(
    "ministry-b", "Ministry B", replace(POLICY, lookup_fields=frozenset(LookupField)), NOW
)
GONE = Partner("gone-c", "Gone C", POLICY, NOW, revoked_at=NOW)
CREDENTIAL = re.compile(r"\Apsk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}\Z")


@dataclass
class Keys:
    """A directory with one key of each kind, and their credentials."""

    bank: IssuedKey = field(default_factory=lambda: issue_key("bank-a"))
    bank_revoked: IssuedKey = field(default_factory=lambda: issue_key("bank-a"))
    ministry: IssuedKey = field(default_factory=lambda: issue_key("ministry-b"))
    gone: IssuedKey = field(default_factory=lambda: issue_key("gone-c"))
    orphan: IssuedKey = field(default_factory=lambda: issue_key("nobody-d"))

    def directory(self) -> PartnerDirectory:
        keys = [
            self.bank.key,
            replace(self.bank_revoked.key, revoked_at=NOW),
            self.ministry.key,
            self.gone.key,
            self.orphan.key,
        ]
        return PartnerDirectory([BANK, MINISTRY, GONE], keys)


def _wrong_secret(credential: str) -> str:
    key_id, _, secret = credential.partition(".")
    other = "A" if secret[0] != "A" else "B"
    return f"{key_id}.{other}{secret[1:]}"


def _unknown_key(credential: str) -> str:
    return f"{KEY_PREFIX}{'0' * 12}.{credential.partition('.')[2]}"


# the failures authenticate refuses, each as a credential made from the keys
FAILURES: dict[str, Callable[[Keys], str]] = {
    "empty": lambda k: "",
    "prefix only": lambda k: KEY_PREFIX,
    "no prefix": lambda k: k.bank.credential.removeprefix(KEY_PREFIX),
    "other prefix": lambda k: "pk_" + k.bank.credential.removeprefix(KEY_PREFIX),
    "upper-case key id": lambda k: f"{KEY_PREFIX}ABCDEF012345.{k.bank.credential[-43:]}",
    "trailing space": lambda k: k.bank.credential + " ",
    "short secret": lambda k: k.bank.credential[:-1],
    "long secret": lambda k: k.bank.credential + "A",
    "secret with padding": lambda k: k.bank.credential + "=",
    "no dot": lambda k: k.bank.credential.replace(".", ""),
    "non-ascii": lambda k: k.bank.credential[:-1] + "é",
    "bearer scheme kept": lambda k: "Bearer " + k.bank.credential,
    "leading space": lambda k: " " + k.bank.credential,
    "unknown key id": lambda k: _unknown_key(k.bank.credential),
    "wrong secret": lambda k: _wrong_secret(k.bank.credential),
    "another key's secret": lambda k: (
        k.bank.credential.partition(".")[0] + "." + k.ministry.credential.partition(".")[2]
    ),
    "revoked key": lambda k: k.bank_revoked.credential,
    "revoked partner": lambda k: k.gone.credential,
    "partner not in the directory": lambda k: k.orphan.credential,
}


# ------------------------------------------------------------------------------ keys


def test_an_issued_key_is_a_prefix_a_key_id_and_a_secret_of_32_random_bytes() -> None:
    issued = issue_key("bank-a")
    assert CREDENTIAL.match(issued.credential)
    key_id, _, secret = issued.credential.removeprefix(KEY_PREFIX).partition(".")
    assert issued.key.key_id == key_id and issued.key.partner_id == "bank-a"
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert issued.key.revoked_at is None


def test_only_the_sha256_of_the_secret_is_kept() -> None:
    issued = issue_key("bank-a")
    secret = issued.credential.partition(".")[2]
    assert issued.key.secret_hash == hashlib.sha256(secret.encode()).digest() == hash_secret(secret)
    assert secret not in repr(issued.key) and secret.encode() not in issued.key.secret_hash
    assert issued.credential not in repr(issued)


def test_every_key_is_new() -> None:
    issued = [issue_key("bank-a") for _ in range(50)]
    assert len({i.key.key_id for i in issued}) == 50
    assert len({i.credential.partition(".")[2] for i in issued}) == 50


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        (None, ""),
        ("", ""),
        ("Bearer psk_abc.def", "psk_abc.def"),
        ("bearer psk_abc.def", "psk_abc.def"),
        ("BEARER   psk_abc.def  ", "psk_abc.def"),
        ("Basic dXNlcjpwYXNz", ""),
        ("psk_abc.def", ""),
        ("Bearer", ""),
        ("Token psk_abc.def", ""),
    ],
)
def test_the_bearer_credential_of_an_authorization_header(
    header: str | None, credential: str
) -> None:
    assert bearer_credential(header) == credential


@pytest.mark.parametrize("partner_id", ["bank-a", "b2", "0-bank", "a" * 63])
def test_partner_ids(partner_id: str) -> None:
    assert PARTNER_ID.fullmatch(partner_id)


@pytest.mark.parametrize("partner_id", ["b", "-bank", "Bank", "bank_a", "bank a", "a" * 64, ""])
def test_not_partner_ids(partner_id: str) -> None:
    assert not PARTNER_ID.match(partner_id)


def test_purpose_codes() -> None:
    for purpose in ("KYC", "SOCIAL_INSURANCE", "A1", "X" * 32):
        assert PURPOSE.fullmatch(purpose)
    for purpose in ("K", "kyc", "1KYC", "_KYC", "KYC-1", "X" * 33, ""):
        assert not PURPOSE.match(purpose)


def test_a_policy_with_look_up_fields_may_look_up() -> None:
    assert not POLICY.may_look_up
    assert MINISTRY.policy.may_look_up


# -------------------------------------------------------------------- authenticate


def test_a_key_in_force_authenticates_its_partner() -> None:
    keys = Keys()
    directory = keys.directory()
    assert directory.authenticate(keys.bank.credential) is BANK
    assert directory.authenticate(keys.ministry.credential) is MINISTRY
    assert set(directory.partners) == {"bank-a", "ministry-b", "gone-c"}


@pytest.mark.parametrize("kind", FAILURES)
def test_every_kind_of_failure_authenticates_nobody(kind: str) -> None:
    keys = Keys()
    assert keys.directory().authenticate(FAILURES[kind](keys)) is None


def test_an_empty_directory_authenticates_nobody() -> None:
    assert PartnerDirectory([], []).authenticate(issue_key("bank-a").credential) is None


class Counting:
    """A wrapper counting the calls of `wrapped`, keeping their arguments and results."""

    def __init__(self, wrapped: Callable[..., object]) -> None:
        self.wrapped = wrapped
        self.calls: list[tuple[tuple[object, ...], object]] = []

    def __call__(self, *args: object) -> object:
        result = self.wrapped(*args)
        self.calls.append((args, result))
        return result


@pytest.mark.parametrize("kind", [*FAILURES, "success"])
def test_each_failure_does_the_same_work_as_a_success(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One SHA-256 of a 43-character secret and one constant-time comparison of two
    32-byte digests, whatever is wrong (or right) with the credential."""
    keys = Keys()
    directory = keys.directory()
    credential = keys.bank.credential if kind == "success" else FAILURES[kind](keys)
    compare_digest = Counting(partners.hmac.compare_digest)
    hashed = Counting(partners.hash_secret)
    monkeypatch.setattr(partners.hmac, "compare_digest", compare_digest)
    monkeypatch.setattr(partners, "hash_secret", hashed)

    found = directory.authenticate(credential)

    assert (found is BANK) is (kind == "success")
    assert len(hashed.calls) == 1
    [((secret,), digest)] = hashed.calls
    assert isinstance(secret, str) and len(secret) == 43
    assert isinstance(digest, bytes) and len(digest) == 32
    assert len(compare_digest.calls) == 1
    [((a, b), equal)] = compare_digest.calls
    assert isinstance(a, bytes) and isinstance(b, bytes)
    assert (len(a), len(b)) == (32, 32)
    assert equal is (
        kind in ("success", "revoked key", "revoked partner", "partner not in the directory")
    )


def test_a_directory_compares_with_a_decoy_never_equal_to_a_hash() -> None:
    """For a malformed credential or an unknown key id the secret is compared with a
    random value of the directory: two directories have different ones."""
    seen: list[bytes] = []
    original = partners.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append(b)
        return original(a, b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(partners.hmac, "compare_digest", spy)
        for _ in range(2):
            PartnerDirectory([], []).authenticate("")
    assert len(seen) == 2 and seen[0] != seen[1]
    assert hash_secret("x" * 43) not in seen


_DIRECTORY = Keys().directory()
_WELL_FORMED = st.builds(
    lambda key_id, secret: f"{KEY_PREFIX}{key_id}.{secret}",
    st.text("0123456789abcdef", min_size=12, max_size=12),
    st.text("ABCXYZabcxyz0189_-", min_size=43, max_size=43),
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | _WELL_FORMED)
def test_no_credential_but_an_issued_one_authenticates_and_none_raises(credential: str) -> None:
    assert _DIRECTORY.authenticate(credential) is None
