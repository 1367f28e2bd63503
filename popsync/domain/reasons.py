"""The catalogue of bad input: every reason code a validator dead letter can carry.

Each `Reason` names the stage that raises it, says in one line what was wrong (never
with personal data) and whether it is *retryable*: whether the very same bytes could
pass later without the registry sending a corrected event, because time catches up
with a clock skew (`*_IN_FUTURE`), because a newer contract version or a missing
capability gets deployed (`UNKNOWN_SCHEMA`, the `*_UNKNOWN` enum defaults) or
because a bug gets fixed
(`INTERNAL_ERROR`). Every other reason is permanent: only a corrected event from the
registry helps, so replaying its dead letters is pointless.

Stages: "trust" (`popsync.trust.verification`: who signed it, and whether that publisher
may send it), "decode" (`popsync.contract.codec`: bytes to a contract record; the
synchronizer dead-letters its own undecodable input with the same codes), "rules"
(`popsync.domain.rules.check_event`, with `pin` and `names`), "worker" (the validator's own
safety net). `CONFLICTS` lists the bad input that is not dead-lettered but surfaced by the
merge as a conflict (stage "merge"): the event is valid on its own and only contradicts
what is already known.

`tests/unit/services/validator/test_bad_input_catalogue.py` keeps this module honest: every
code raised in the code base is listed here, every entry here is raised somewhere, and each
is produced by at least one kind of bad input sent through the real validator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["CONFLICTS", "REASONS", "Outcome", "Reason", "Stage", "is_retryable"]

Stage = Literal["decode", "trust", "rules", "worker", "merge"]
Outcome = Literal["dead_letter", "conflict"]


@dataclass(frozen=True, slots=True)
class Reason:
    """One kind of bad input and what happens to it."""

    code: str
    stage: Stage
    description: str
    retryable: bool = False
    outcome: Outcome = "dead_letter"


def _index(reasons: Iterable[Reason]) -> Mapping[str, Reason]:
    by_code: dict[str, Reason] = {}
    for reason in reasons:
        if reason.code in by_code:  # pragma: no cover - caught at import
            raise RuntimeError(f"reason code listed twice: {reason.code}")
        by_code[reason.code] = reason
    return MappingProxyType(by_code)


def _decode(code: str, description: str, *, retryable: bool = False) -> Reason:
    return Reason(code, "decode", description, retryable)


def _trust(code: str, description: str) -> Reason:
    return Reason(code, "trust", description)


def _rule(code: str, description: str, *, retryable: bool = False) -> Reason:
    return Reason(code, "rules", description, retryable)


REASONS: Mapping[str, Reason] = _index(
    [
        # ---- decode: the value is not a readable RegistryEvent ------------------------------
        _decode("EMPTY_VALUE", "message value is null (a tombstone) or zero bytes"),
        _decode(
            "EVENT_TOO_LARGE",
            "message value is larger than the 1 MiB event limit (it reached the broker "
            "compressed); a dead letter too large to keep whole keeps its size, SHA-256 "
            "and first bytes",
        ),
        _decode(
            "BAD_MAGIC",
            "value does not start with the Avro single-object header C3 01 "
            "(e.g. Confluent wire format, JSON, or shorter than the header)",
        ),
        _decode(
            "UNKNOWN_SCHEMA",
            "writer schema fingerprint unknown to this reader: a newer contract version "
            "(passes once it is deployed) or another record type",
            retryable=True,
        ),
        _decode(
            "AVRO_CORRUPT",
            "Avro body unreadable: truncated, or a length, enum index or union branch out of range",
        ),
        _decode("AVRO_TRAILING_BYTES", "bytes left over after the Avro record"),
        _decode("AVRO_INVALID_UTF8", "a string in a well-formed Avro body is not valid UTF-8"),
        _decode(
            "AVRO_DATE_OUT_OF_RANGE",
            "a date or timestamp in a well-formed Avro body lies outside years 1-9999",
        ),
        _decode(
            "CONTRACT_VIOLATION",
            "a decoded record does not fit the generated models: only possible for Avro "
            "input if models and schemas drifted apart (a bug; passes after the fix)",
            retryable=True,
        ),
        # ---- trust: who signed it, and may they (popsync.trust.verification) ---------------
        _trust("UNSIGNED", "no signature or key id header: only signed events are accepted"),
        _trust("SIGNER_UNKNOWN", "the key id names no key of the publisher directory"),
        _trust(
            "SIGNATURE_INVALID",
            "the signature does not verify: altered bytes or key, or another publisher's key id",
        ),
        _trust("KEY_REVOKED", "signed with a key, or by a publisher, revoked before it arrived"),
        _trust("KEY_EXPIRED", "signed with a key outside its validity window (and grace)"),
        _trust(
            "SOURCE_NOT_SIGNER",
            "the event declares another registry than the kind of the publisher that signed it",
        ),
        _trust("EVENT_TYPE_NOT_PERMITTED", "the signing publisher may not publish this type"),
        _trust("PROVINCE_OUT_OF_SCOPE", "the signing publisher does not speak for its province"),
        # ---- rules: message key and subject PIN ---------------------------------------------
        _rule(
            "PIN_REQUIRED",
            "an event other than a birth or a sector record has no subject PIN (a birth "
            "without one gets a PIN allocated instead, a sector record is matched to a citizen)",
        ),
        _rule(
            "PIN_NOT_12_DIGITS",
            "a PIN that is not exactly 12 ASCII digits (letters, wrong length, digits of "
            "another script, surrounding whitespace)",
        ),
        _rule("PIN_UNKNOWN_PROVINCE", "PIN prefix is neither a current nor a legacy province"),
        _rule("PIN_BAD_GENDER_CENTURY_DIGIT", "4th PIN digit is 6-9, which encode nothing"),
        _rule(
            "PIN_CENTURY_GENDER_MISMATCH",
            "4th PIN digit contradicts the registered sex or birth century",
        ),
        _rule("PIN_BIRTH_YEAR_MISMATCH", "PIN birth-year digits contradict the birth date"),
        _rule("KEY_MISSING", "message key is null or empty; it must be the subject PIN"),
        _rule("KEY_PIN_MISMATCH", "message key differs from the subject PIN"),
        # ---- rules: event type, source ------------------------------------------------------
        _rule(
            "EVENT_TYPE_UNKNOWN",
            "event type unknown to this contract version (passes once the newer one is deployed)",
            retryable=True,
        ),
        _rule("PAYLOAD_TYPE_MISMATCH", "payload record type does not match the event type"),
        _rule(
            "SOURCE_UNKNOWN",
            "source registry unknown to this contract version (passes once the newer one "
            "is deployed)",
            retryable=True,
        ),
        _rule(
            "SOURCE_NOT_AUTHORITATIVE",
            "the source registry is not the authority for this event type",
        ),
        # ---- rules: places ------------------------------------------------------------------
        _rule("SOURCE_PROVINCE_UNKNOWN", "source province code never existed (current or legacy)"),
        _rule("BIRTHPLACE_PROVINCE_UNKNOWN", "birthplace province code never existed"),
        _rule(
            "HOMETOWN_PROVINCE_UNKNOWN", "a sector record's hometown province code never existed"
        ),
        _rule("DEATH_PLACE_PROVINCE_UNKNOWN", "death place province code never existed"),
        _rule("ADDRESS_PROVINCE_UNKNOWN", "address province code never existed"),
        _rule("COMMUNE_CODE_MALFORMED", "a commune code is not 5 ASCII digits"),
        # ---- rules: dates and times ---------------------------------------------------------
        _rule(
            "OCCURRED_IN_FUTURE",
            "occurred_at is later than now plus the tolerated clock skew",
            retryable=True,
        ),
        _rule(
            "RECORDED_IN_FUTURE",
            "recorded_at is later than now plus the tolerated clock skew",
            retryable=True,
        ),
        _rule("RECORDED_BEFORE_OCCURRED", "recorded_at is before occurred_at"),
        _rule(
            "DATE_IN_FUTURE",
            "a legal date in the payload is after today (passes once the day comes)",
            retryable=True,
        ),
        _rule("DATE_TOO_EARLY", "a date or occurred_at before 1900, which no PIN can encode"),
        _rule("DATE_BEFORE_BIRTH", "a date before the birth year encoded in the subject PIN"),
        _rule("DEATH_BEFORE_BIRTH", "death date before the birth year encoded in the subject PIN"),
        _rule(
            "VALID_UNTIL_BEFORE_EFFECTIVE",
            "temporary residence ends before it takes effect",
        ),
        _rule("EXPIRY_BEFORE_ISSUE", "identity card expires on or before its issue date"),
        # ---- rules: names and free text -----------------------------------------------------
        _rule("NAME_EMPTY", "a personal name is empty or only whitespace"),
        _rule(
            "NAME_CONTROL_CHARS",
            "a personal name holds control, format (zero-width, bidi) or line-break characters",
        ),
        _rule("NAME_TOO_LONG", "a personal name is longer than 100 characters once normalized"),
        _rule(
            "NAME_BAD_CHARACTERS",
            "a personal name holds digits, punctuation or symbols, or no letter at all",
        ),
        _rule("FIELD_EMPTY", "a required text field or id is empty"),
        _rule("FIELD_TOO_LONG", "a text field or id is longer than its bound"),
        _rule("CONTROL_CHARACTERS", "a text field or id holds control or format characters"),
        _rule("NATIONALITY_MALFORMED", "nationality is not an ISO 3166-1 alpha-2 code"),
        _rule("CARD_NUMBER_MALFORMED", "identity card number is not 12 ASCII digits"),
        # ---- rules: other people's PINs -----------------------------------------------------
        _rule("FATHER_PIN_INVALID", "father's PIN is not a valid PIN"),
        _rule("FATHER_PIN_IS_SUBJECT", "father's PIN is the subject's own"),
        _rule("MOTHER_PIN_INVALID", "mother's PIN is not a valid PIN"),
        _rule("MOTHER_PIN_IS_SUBJECT", "mother's PIN is the subject's own"),
        _rule("SPOUSE_PIN_INVALID", "spouse's PIN is not a valid PIN"),
        _rule("SPOUSE_PIN_IS_SUBJECT", "spouse's PIN is the subject's own"),
        _rule("PREVIOUS_PIN_INVALID", "a corrected PIN's previous PIN is not a valid PIN"),
        _rule("PREVIOUS_PIN_IS_SUBJECT", "a corrected PIN's previous PIN is the subject's own"),
        # ---- rules: aliases (legacy identifiers) --------------------------------------------
        _rule(
            "LEGACY_ID_MALFORMED",
            "a legacy identifier that is not a 9-digit CMND (or, naming the subject, a "
            "12-digit former PIN)",
        ),
        _rule(
            "ALIAS_UNKNOWN",
            "the subject is named by a legacy identifier no citizen is known by yet (passes "
            "once the event that declares the alias has been processed)",
            retryable=True,
        ),
        # ---- rules: civil-status changes ----------------------------------------------------
        _rule(
            "CHANGE_KIND_UNKNOWN",
            "civil-status change kind unknown to this contract version (passes once the "
            "newer one is deployed)",
            retryable=True,
        ),
        _rule("CHANGE_WITHOUT_VALUE", "a civil-status change carries none of its new values"),
        # ---- worker -------------------------------------------------------------------------
        Reason(
            "ALIAS_TAKEN",
            "worker",
            "the event declares an alias that already names another citizen",
        ),
        Reason(
            "SOURCE_QUARANTINED",
            "worker",
            "its publishing source is quarantined after crossing the dead-letter limit "
            "(passes once an operator releases it: `popsync sources release`)",
            retryable=True,
        ),
        Reason(
            "CITIZEN_DAILY_LIMIT",
            "worker",
            "its citizen already had the day's maximum of events applied (passes the next day)",
            retryable=True,
        ),
        Reason(
            "INTERNAL_ERROR",
            "worker",
            "unexpected error while checking the event: a bug (passes after the fix)",
            retryable=True,
        ),
    ]
)

CONFLICTS: Mapping[str, Reason] = _index(
    [
        Reason(
            "DUPLICATE_EVENT_ID_DIFFERENT_CONTENT",
            "merge",
            "an event id already applied arrives with other content; the first one stays",
            outcome="conflict",
        ),
        Reason(
            "DEATH_BEFORE_BIRTH",
            "merge",
            "death date before the registered birth date (the same year as the PIN's, so "
            "only the merge, which knows the birth date, can tell)",
            outcome="conflict",
        ),
    ]
)


def is_retryable(code: str) -> bool:
    """Whether a dead letter with this reason could pass unchanged later (see module doc).

    An unknown code (e.g. written by a newer worker version) counts as permanent, so that
    nothing is replayed in a loop on a guess.
    """
    reason = REASONS.get(code)
    return reason is not None and reason.retryable
