"""`popsync partners …` and `popsync audit citizen` without a database: policies as given on
the command line (usage errors as `UsageError`, exit 2), how a partner is described, and
what is refused before any connection is made."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from popsync.ops import failures
from popsync.ops import partners as ops
from popsync.ops.partners import (
    DEFAULT_BURST,
    DEFAULT_DAILY_QUOTA,
    DEFAULT_RATE,
    LOOKUP_FIELDS,
    PolicyRequest,
    audit_citizen,
    describe_partner,
    describe_policy,
    policy_of,
)
from popsync.settings import ServeSettings, Settings
from popsync.verification.models import LookupField
from popsync.verification.partners import Partner, PartnerKey, Policy

F = LookupField
NOW = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
CURRENT = Policy(frozenset({"KYC"}), frozenset({F.FULL_NAME}), 5.0, 10, 500)
PIN = "079090000123"


class Unreachable(Exception):
    """What the tests' `operator_connection` raises: nothing may get that far."""


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(settings: object) -> None:
        raise Unreachable

    monkeypatch.setattr(ops, "operator_connection", connect)


# ------------------------------------------------------------------------- policies


def test_a_new_policy_takes_the_defaults() -> None:
    policy = policy_of(PolicyRequest(purposes=["KYC"]))
    assert policy == Policy(
        frozenset({"KYC"}), frozenset(), DEFAULT_RATE, DEFAULT_BURST, DEFAULT_DAILY_QUOTA
    )
    assert not policy.may_look_up


def test_purposes_are_upper_cased_and_stripped() -> None:
    policy = policy_of(PolicyRequest(purposes=[" kyc ", "Social_Insurance", "KYC"]))
    assert policy.purposes == {"KYC", "SOCIAL_INSURANCE"}


@pytest.mark.parametrize(
    "purposes", [[], [""], ["K"], ["1KYC"], ["_KYC"], ["KYC-1"], ["KYC", "A B"], ["X" * 33]]
)
def test_a_bad_or_missing_purpose_is_a_usage_error(purposes: list[str]) -> None:
    with pytest.raises(failures.UsageError, match="purpose"):
        policy_of(PolicyRequest(purposes=purposes))


def test_a_usage_error_exits_2_with_one_line() -> None:
    with pytest.raises(failures.UsageError) as exc:
        policy_of(PolicyRequest(purposes=["kyc-1"]))
    described = failures.describe(exc.value)
    assert described.exit_code == failures.EXIT_USAGE == 2
    assert len(described.lines) == 1 and "'KYC-1'" in described.lines[0]


def test_a_policy_needs_a_purpose() -> None:
    with pytest.raises(failures.UsageError, match="at least one --purpose"):
        policy_of(PolicyRequest())


@pytest.mark.parametrize(
    ("given", "fields"),
    [
        ([], set()),
        (["full_name"], {F.FULL_NAME}),
        (["full_name,birth_date", "sex"], {F.FULL_NAME, F.BIRTH_DATE, F.SEX}),
        ([" full_name , life_status ,", "full_name"], {F.FULL_NAME, F.LIFE_STATUS}),
        ([",".join(LOOKUP_FIELDS)], set(LookupField)),
    ],
)
def test_look_up_fields_are_named_one_or_comma_separated(
    given: list[str], fields: set[LookupField]
) -> None:
    policy = policy_of(PolicyRequest(purposes=["KYC"], lookup_fields=given))
    assert policy.lookup_fields == fields
    assert policy.may_look_up is bool(fields)


@pytest.mark.parametrize("field", ["pin", "FULL_NAME", "address", "full name"])
def test_an_unknown_look_up_field_is_a_usage_error_naming_it(field: str) -> None:
    with pytest.raises(failures.UsageError) as exc:
        policy_of(PolicyRequest(purposes=["KYC"], lookup_fields=["sex", field]))
    assert repr(field) in str(exc.value)
    assert "full_name" in str(exc.value)  # the choices


def test_look_up_fields_are_the_fields_a_view_may_show() -> None:
    assert set(LOOKUP_FIELDS) == {field.value for field in LookupField}


def test_a_change_keeps_what_it_does_not_name() -> None:
    assert policy_of(PolicyRequest(), CURRENT) == CURRENT
    assert policy_of(PolicyRequest(burst=3), CURRENT) == Policy(
        CURRENT.purposes, CURRENT.lookup_fields, 5.0, 3, 500
    )
    changed = policy_of(
        PolicyRequest(purposes=["AML"], lookup_fields=[], rate_per_second=0.5, daily_quota=0),
        CURRENT,
    )
    assert changed == Policy(frozenset({"AML"}), frozenset(), 0.5, 10, 0)


@pytest.mark.parametrize(
    "request_",
    [
        PolicyRequest(rate_per_second=0),
        PolicyRequest(rate_per_second=-1.0),
        PolicyRequest(rate_per_second=float("nan")),
        PolicyRequest(burst=0),
        PolicyRequest(burst=-5),
        PolicyRequest(daily_quota=-1),
    ],
)
def test_limits_out_of_range_are_a_usage_error(request_: PolicyRequest) -> None:
    with pytest.raises(failures.UsageError, match="--rate must be > 0"):
        policy_of(request_, CURRENT)


def test_a_daily_quota_of_zero_is_allowed() -> None:
    assert policy_of(PolicyRequest(purposes=["KYC"], daily_quota=0)).daily_quota == 0


# ---------------------------------------------------------------------- descriptions


def test_a_policy_is_described_on_one_line_sorted() -> None:
    policy = Policy(frozenset({"KYC", "AML"}), frozenset({F.SEX, F.FULL_NAME}), 12.5, 20, 1000)
    assert describe_policy(policy) == (
        "purposes AML,KYC  look-up fields full_name,sex  12.5 requests/s (burst 20)  1000 items/day"
    )


def test_a_verify_only_policy_says_so() -> None:
    policy = Policy(frozenset({"KYC"}), frozenset(), 50.0, 100, 100_000)
    assert describe_policy(policy) == (
        "purposes KYC  look-up fields none (verify only)  50 requests/s (burst 100)  "
        "100000 items/day"
    )


def test_a_partner_is_described_with_its_keys_in_force_and_todays_use() -> None:
    partner = Partner("bank-a", "Ngân hàng A", CURRENT, NOW)
    keys = [
        PartnerKey("aaaaaaaaaaaa", "bank-a", b"h" * 32),
        PartnerKey("bbbbbbbbbbbb", "bank-a", b"h" * 32, revoked_at=NOW),
        PartnerKey("cccccccccccc", "bank-a", b"h" * 32),
    ]
    line = describe_partner(partner, keys, used_today=42)
    assert line == (
        f"bank-a  active  {describe_policy(CURRENT)}  used today 42  "
        "keys in force aaaaaaaaaaaa,cccccccccccc  name 'Ngân hàng A'"
    )
    assert "h" * 32 not in line


def test_a_revoked_partner_is_described_with_the_utc_time_of_revocation() -> None:
    hanoi = timezone(timedelta(hours=7))
    revoked = datetime(2026, 3, 2, 1, 15, 30, tzinfo=hanoi)
    partner = Partner("bank-a", "Bank A", CURRENT, NOW, revoked_at=revoked)
    keys = [PartnerKey("aaaaaaaaaaaa", "bank-a", b"h" * 32, revoked_at=revoked)]
    line = describe_partner(partner, keys, used_today=0)
    assert line.startswith("bank-a  revoked 2026-03-01T18:15:30Z  ")
    assert "keys in force none" in line


# ------------------------------------------------------ refused before connecting


@pytest.mark.parametrize(
    "partner_id", ["Bank-A", "b", "-bank", "bank_a", "bank a", "a" * 64, "", "bank-a\n"]
)
def test_a_bad_partner_id_is_a_usage_error_before_any_connection(
    partner_id: str, no_database: None
) -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(failures.UsageError, match="partner id"):
        ops.new_key(Settings(), partner_id, "alice", out=out, err=err)
    with pytest.raises(failures.UsageError, match="partner id"):
        ops.add_partner(
            Settings(), partner_id, None, PolicyRequest(purposes=["KYC"]), "alice", out=out, err=err
        )
    assert out.getvalue() == err.getvalue() == ""


def test_a_bad_policy_is_a_usage_error_before_any_connection(no_database: None) -> None:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(failures.UsageError, match="purpose"):
        ops.add_partner(Settings(), "bank-a", None, PolicyRequest(), "alice", out=out, err=err)
    assert out.getvalue() == ""


def test_an_operator_name_with_control_characters_is_a_usage_error(no_database: None) -> None:
    with pytest.raises(failures.UsageError, match="operator"):
        ops.revoke_key(
            Settings(), "bank-a", "aaaaaaaaaaaa", "ali\x1bce", out=io.StringIO(), err=io.StringIO()
        )


def _with_audit_key(key: str | None) -> Settings:
    return Settings(serve=ServeSettings(audit_key=key))


@pytest.mark.parametrize("pin", ["07909000012", "999090000123", "079690000123", "0790900001234"])
def test_audit_of_a_malformed_pin_is_a_usage_error_with_the_pin_masked(
    pin: str, no_database: None
) -> None:
    with pytest.raises(failures.UsageError) as exc:
        audit_citizen(_with_audit_key("k" * 32), pin, None, out=io.StringIO())
    assert pin not in str(exc.value)
    assert "*" in str(exc.value)


@pytest.mark.parametrize("key", [None, "", "k" * 31])
def test_audit_without_the_audit_key_is_a_usage_error(key: str | None, no_database: None) -> None:
    with pytest.raises(failures.UsageError, match="POPSYNC_SERVE__AUDIT_KEY"):
        audit_citizen(_with_audit_key(key), PIN, None, out=io.StringIO())


def test_audit_with_a_key_and_a_pin_goes_to_the_database(no_database: None) -> None:
    with pytest.raises(Unreachable):
        audit_citizen(_with_audit_key("k" * 32), PIN, None, out=io.StringIO())
