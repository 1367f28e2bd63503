"""A catalogue of bad input, each kind with a test (`popsync.domain.reasons`).

Every kind is built as the real bytes and headers a registry (or a broken producer) would
put on the topic — signed by its registry's development key unless the kind is about the
signature — and sent through the real `ValidatorStep`, signature check first: it must become
exactly one dead letter on the dead-letter topic, with its reason code and the original key
and value byte for byte. None may crash the worker, none may be lost. Two kinds pass the
validator and are caught by the merge as conflicts instead.

The kinds themselves (`bad_messages`) are built in `tests/builders.py`:
`tests/integration/test_bad_input.py` sends the same kinds through the real broker.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import random
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from popsync.services.validator import step as validator_step
from popsync.services.validator.step import Routed, ValidatorStep

from popsync.contract import models as m
from popsync.contract.codec import (
    HEADER_SIZE,
    Codec,
    DecodeError,
    from_avro_datum,
    to_avro_datum,
)
from popsync.domain.merge import Applied, CitizenState, Duplicate, Rejected, apply_event, fold
from popsync.domain.reasons import CONFLICTS, REASONS, is_retryable
from popsync.runtime.deadletter import dead_letter
from popsync.runtime.messages import InboundMessage, OutboundMessage
from popsync.runtime.processing import Rejected as Parked
from popsync.runtime.sources import UNIDENTIFIED, UNVERIFIED
from popsync.settings import Settings
from tests.builders import (
    EVENT_CODEC,
    KINDS,
    BadMessage,
    Citizens,
    bad_messages,
    envelope,
    sent,
    spoil,
)
from tests.fakes import (
    InMemoryAliasDirectory,
    InMemoryMatchingStore,
    InMemoryPinAllocator,
    processing,
)
from tests.signing import dev_verifier, signed

DEAD_LETTER_CODEC = Codec(m.DeadLetter)
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[4]

# Catalogue entries that no input can produce, and why (each is still tested below).
NOT_CONSTRUCTIBLE = {
    "CONTRACT_VIOLATION": "models are generated from the schemas (test_contract), so every "
    "datum fastavro decodes validates; `popsync publish` raises it for JSON lines",
    "INTERNAL_ERROR": "only a bug raises it; test_an_unexpected_error_is_dead_lettered injects one",
    "ALIAS_TAKEN": "needs the alias directory's state; tests/unit/domain/test_aliases.py covers it",
    "SOURCE_QUARANTINED": "needs a quarantined source, not bad bytes; "
    "tests/unit/runtime/test_quarantine.py and tests/integration/test_blast_radius.py cover it",
    "CITIZEN_DAILY_LIMIT": "raised by the synchronizer for a citizen's excess events of a day; "
    "tests/unit/services/synchronizer covers it",
    "KEY_REVOKED": "needs a revoked key or publisher in the directory, not bad bytes; "
    "tests/unit/trust/test_signing.py covers it",
    "KEY_EXPIRED": "needs a key outside its validity window in the directory, not bad bytes; "
    "tests/unit/trust/test_signing.py covers it",
    # The signature check runs before the rules; its publisher's authority pre-empts these.
    "SOURCE_UNKNOWN": "pre-empted by the signature check: no publisher is of kind UNKNOWN, so "
    "the event is UNSIGNED or SOURCE_NOT_SIGNER; kept as defence in depth",
    "SOURCE_NOT_AUTHORITATIVE": "pre-empted by SOURCE_NOT_SIGNER / EVENT_TYPE_NOT_PERMITTED: a "
    "verified event declares its signer's kind and a type it may publish; kept as defence in depth",
    "EVENT_TYPE_UNKNOWN": "pre-empted by EVENT_TYPE_NOT_PERMITTED: no publisher may publish "
    "UNKNOWN; kept as defence in depth",
    "SOURCE_PROVINCE_UNKNOWN": "pre-empted by PROVINCE_OUT_OF_SCOPE: a publisher speaks only for "
    "provinces that exist; kept as defence in depth",
}
# The rule reasons above still guard the rules themselves: `route` (the rules without the
# signature check) gives them for the kinds that now stop at the signature.
PRE_EMPTED = {
    "source_registry_unknown": "SOURCE_UNKNOWN",
    "residence_registry_publishes_a_birth": "SOURCE_NOT_AUTHORITATIVE",
    "social_insurance_publishes_a_death": "SOURCE_NOT_AUTHORITATIVE",
    "sector_record_from_the_residence_registry": "SOURCE_NOT_AUTHORITATIVE",
    "event_type_unknown": "EVENT_TYPE_UNKNOWN",
    "source_province_never_existed": "SOURCE_PROVINCE_UNKNOWN",
}


# --------------------------------------------------------------------------------------------
# running the real validator


SETTINGS = Settings()
STEP = ValidatorStep(
    SETTINGS,
    allocator=InMemoryPinAllocator(),
    aliases=InMemoryAliasDirectory(),
    matching=InMemoryMatchingStore(),
    clock=lambda: NOW,
    verifier=dev_verifier(),
)
TOPICS = SETTINGS.topics


def inbound(
    key: bytes | None,
    value: bytes | None,
    offset: int = 17,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> InboundMessage:
    return InboundMessage(TOPICS.registry_events, 3, offset, key, value, headers)


def judged(message: InboundMessage) -> tuple[Parked | None, str]:
    """What the real validator (signature check, then rules) makes of one message: why it is
    parked (None: it passes), and the source it is judged by."""
    result = asyncio.run(STEP([message]))
    (source,) = result.sources
    return result.rejected.get(0), source


def parked(message: InboundMessage, rejected: Routed | Parked | None) -> OutboundMessage:
    """The dead letter the runtime makes of a rejected message (popsync.runtime.processing)."""
    if isinstance(rejected, Routed):
        rejected = rejected.rejected
    assert rejected is not None
    return dead_letter(
        message,
        topic=TOPICS.dead_letters,
        stage="validator",
        reason=rejected.reason,
        description=rejected.description,
        event=rejected.event,
    )


def assert_dead_letter(
    output: OutboundMessage, key: bytes | None, value: bytes | None, reason: str, offset: int
) -> m.DeadLetter:
    assert output.topic == TOPICS.dead_letters
    assert output.key == key
    assert ("popsync.reason", reason.encode()) in output.headers
    letter: m.DeadLetter = DEAD_LETTER_CODEC.decode(output.value)
    assert letter.reason_code == reason
    assert letter.stage == "validator"
    assert letter.original_key == key
    assert letter.original_value == value
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        TOPICS.registry_events,
        3,
        offset,
    )
    return letter


def assert_no_personal_data(text: str, key: bytes | None) -> None:
    assert text.strip()
    assert "Lương" not in text and "Trang" not in text
    assert not re.search(r"[0-9]{12}", text)
    assert "***" not in text  # not even a masked PIN
    if key:
        assert key.decode(errors="replace").strip() not in text


UNIT_MESSAGES = bad_messages(Citizens(itertools.count(900_000), NOW))


@pytest.mark.parametrize("bad", UNIT_MESSAGES, ids=[bad.kind for bad in UNIT_MESSAGES])
def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason(bad: BadMessage) -> None:
    message = inbound(bad.key, bad.value, headers=bad.headers)
    rejected, source = judged(message)
    assert rejected is not None and rejected.reason == bad.reason
    letter = assert_dead_letter(parked(message, rejected), bad.key, bad.value, bad.reason, 17)
    assert bad.reason in REASONS
    assert REASONS[bad.reason].outcome == "dead_letter"
    assert_no_personal_data(letter.message, bad.key)
    if REASONS[bad.reason].stage == "decode":  # never reaches the signature check
        assert source == UNIDENTIFIED
    elif REASONS[bad.reason].stage == "trust":
        assert source == UNVERIFIED  # not the registry it names: it proved nothing
    else:  # signed as its registry would: judged by that publisher
        assert source.startswith("dev-") and bad.headers


@pytest.mark.parametrize("kind", sorted(PRE_EMPTED))
def test_a_kind_the_signature_check_stops_first_still_breaks_its_rule(kind: str) -> None:
    (bad,) = [b for b in UNIT_MESSAGES if b.kind == kind]
    assert REASONS[bad.reason].stage == "trust"
    assert STEP.route(inbound(bad.key, bad.value), NOW).reason == PRE_EMPTED[kind]
    assert PRE_EMPTED[kind] in NOT_CONSTRUCTIBLE


def test_the_catalogue_has_at_least_40_distinct_kinds() -> None:
    names = [kind.name for kind in KINDS]
    assert len(set(names)) == len(names) >= 40
    # Distinct inputs too: no two kinds are the same bytes.
    assert len({(b.key, b.value) for b in UNIT_MESSAGES}) == len(UNIT_MESSAGES)


def test_every_catalogue_entry_is_produced_by_a_kind_or_explained() -> None:
    produced = {kind.reason for kind in KINDS}
    assert produced <= set(REASONS)
    assert not produced & set(NOT_CONSTRUCTIBLE)
    assert produced | set(NOT_CONSTRUCTIBLE) == set(REASONS)


def test_a_batch_of_every_kind_and_good_events_gives_one_output_per_input_in_order() -> None:
    citizens = Citizens(itertools.count(910_000), NOW)
    expected: list[str | None] = []  # reason, or None for a good event
    batch: list[InboundMessage] = []
    for i, bad in enumerate(bad_messages(citizens)):
        if i % 7 == 0:  # good ones in between, including a legacy province, which is mapped
            good = citizens.move(province_code="74") if i % 2 else citizens.birth()
            batch.append(signed(inbound(*sent(good), offset=len(batch))))
            expected.append(None)
        batch.append(inbound(bad.key, bad.value, offset=len(batch), headers=bad.headers))
        expected.append(bad.reason)
    step = ValidatorStep(
        SETTINGS,
        allocator=InMemoryPinAllocator(),
        aliases=InMemoryAliasDirectory(),
        matching=InMemoryMatchingStore(),
        clock=lambda: NOW,
        verifier=dev_verifier(),
    )
    process, producer = processing(step, "validator", SETTINGS)

    asyncio.run(process(batch))

    assert len(producer.sent) == len(batch)
    validated = iter(o for o in producer.sent if o.topic == TOPICS.validated_events)
    letters = iter(o for o in producer.sent if o.topic == TOPICS.dead_letters)
    for message, reason in zip(batch, expected, strict=True):  # each topic in input order
        if reason is None:
            output = next(validated)
            assert output.key == message.key
            event = EVENT_CODEC.decode(output.value)
            assert event.subject_pin is not None and event.subject_pin.encode() == message.key
        else:
            assert_dead_letter(next(letters), message.key, message.value, reason, message.offset)
    assert expected.count(None) >= 10


def test_an_unexpected_error_is_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> m.RegistryEvent:
        raise ZeroDivisionError(f"bug while checking {Citizens.NAME}")  # a careless message

    monkeypatch.setattr(validator_step, "check_event", broken)
    key, value = sent(Citizens(itertools.count(920_000), NOW).birth())
    process, producer = processing(STEP, "validator", SETTINGS)
    asyncio.run(process([signed(inbound(key, value))]))
    (output,) = producer.sent
    letter = assert_dead_letter(output, key, value, "INTERNAL_ERROR", 17)
    # The type only: no data from the exception.
    assert letter.message == "ZeroDivisionError in validator"
    assert REASONS["INTERNAL_ERROR"].retryable


def test_a_datum_the_models_refuse_is_a_contract_violation_not_a_crash() -> None:
    # No Avro bytes get here (NOT_CONSTRUCTIBLE); a datum that did, even in the payload,
    # would still be a DecodeError with its code, not a pydantic error escaping the codec.
    datum = to_avro_datum(Citizens(itertools.count(925_000), NOW).birth())
    name, body = datum["payload"]
    datum["payload"] = (name, {**body, "birth_date": "17/05/2003"})
    with pytest.raises(DecodeError) as info:
        from_avro_datum(m.RegistryEvent, datum)
    assert info.value.reason == "CONTRACT_VIOLATION"
    assert "birth_date" in str(info.value) and "17/05/2003" not in str(info.value)


def test_no_mutation_of_the_bytes_crashes_the_validator() -> None:
    """Random damage to valid values: always one dead letter with a catalogued, permanent
    decode or rule reason, never an exception and never INTERNAL_ERROR."""
    citizens = Citizens(itertools.count(960_000), NOW)
    values = [
        value
        for event in (citizens.birth(), citizens.card(), citizens.move(), citizens.marriage())
        if (value := EVENT_CODEC.encode(event))
    ]
    rng = random.Random(20251123)
    seen: set[str | None] = set()
    for _ in range(3000):
        damaged = bytearray(rng.choice(values))
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(HEADER_SIZE, len(damaged))] = rng.randrange(256)
        routed = STEP.route(inbound(b"079303000001", bytes(damaged)), NOW)
        seen.add(routed.reason)
        assert routed.reason is None or routed.reason in REASONS
        assert routed.reason != "INTERNAL_ERROR"
    assert {"AVRO_CORRUPT", "AVRO_INVALID_UTF8"} <= seen


# --------------------------------------------------------------------------------------------
# the kinds that are conflicts, not dead letters


def validated(event: m.RegistryEvent) -> m.RegistryEvent:
    routed = STEP.route(inbound(*sent(event)), NOW)
    assert routed.reason is None, routed.reason
    assert routed.event is not None
    return routed.event


def test_duplicate_event_id_with_different_content_is_a_conflict() -> None:
    citizens = Citizens(itertools.count(930_000), NOW)
    first = citizens.birth()
    reused = spoil(first, registration_number="KS-999/2003")  # same event id, other content
    assert reused.event_id == first.event_id
    accepted, second = validated(first), validated(reused)  # each one is valid on its own
    assert first.subject_pin is not None

    applied = apply_event(CitizenState(pin=first.subject_pin), accepted)
    assert isinstance(applied, Applied)
    outcome = apply_event(applied.state, second)

    assert isinstance(outcome, Rejected)
    code = outcome.conflict.code
    assert code == "DUPLICATE_EVENT_ID_DIFFERENT_CONTENT"
    assert CONFLICTS[code].outcome == "conflict" and CONFLICTS[code].stage == "merge"
    assert isinstance(apply_event(applied.state, accepted), Duplicate)  # a true re-send
    assert applied.state.events[first.event_id] == accepted  # the first one stays


def test_death_before_the_birth_date_in_the_birth_year_is_a_conflict() -> None:
    citizens = Citizens(itertools.count(940_000), NOW)
    born = citizens.birth()  # 17 May 2003
    assert born.subject_pin is not None
    death = envelope(
        citizens.death(),
        subject_pin=born.subject_pin,
        occurred_at=datetime(2003, 6, 2, 3, tzinfo=UTC),
        recorded_at=datetime(2003, 6, 2, 5, tzinfo=UTC),
    )
    death = spoil(death, death_date=date(2003, 2, 1))  # same year as the PIN: valid alone
    events = [validated(born), validated(death)]

    _, conflicts = fold(born.subject_pin, events)

    assert {k: c.code for k, c in conflicts.items()} == {death.event_id: "DEATH_BEFORE_BIRTH"}
    assert CONFLICTS["DEATH_BEFORE_BIRTH"].outcome == "conflict"


# --------------------------------------------------------------------------------------------
# the catalogue itself


RETRYABLE = {
    "UNKNOWN_SCHEMA",
    "CONTRACT_VIOLATION",
    "EVENT_TYPE_UNKNOWN",
    "SOURCE_UNKNOWN",
    "CHANGE_KIND_UNKNOWN",
    "ALIAS_UNKNOWN",
    "OCCURRED_IN_FUTURE",
    "RECORDED_IN_FUTURE",
    "DATE_IN_FUTURE",
    "INTERNAL_ERROR",
    "SOURCE_QUARANTINED",
    "CITIZEN_DAILY_LIMIT",
}


def test_retryable_reasons_are_exactly_those_the_same_bytes_can_pass_later() -> None:
    assert {code for code in REASONS if is_retryable(code)} == RETRYABLE
    assert not is_retryable("NO_SUCH_CODE")  # unknown: permanent, never replayed on a guess
    assert not any(reason.retryable for reason in CONFLICTS.values())


def test_a_future_date_passes_once_its_time_has_come() -> None:
    # Why *_IN_FUTURE is retryable: the very same bytes, checked later, are accepted.
    citizens = Citizens(itertools.count(950_000), NOW)
    bad = {b.kind: b for b in bad_messages(citizens)}
    for kind in (
        "occurred_in_future",
        "recorded_in_future",
        "temporary_residence_effective_in_future",
    ):
        message = inbound(bad[kind].key, bad[kind].value)
        assert STEP.route(message, NOW).reason == bad[kind].reason
        assert STEP.route(message, NOW + timedelta(days=61)).reason is None


def test_each_entry_is_well_formed() -> None:
    for catalogue, outcome in ((REASONS, "dead_letter"), (CONFLICTS, "conflict")):
        for code, reason in catalogue.items():
            assert reason.code == code
            assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", code)  # UNSIGNED: one word
            assert reason.outcome == outcome
            assert reason.stage in ("decode", "trust", "rules", "worker", "merge")
            assert reason.description and "\n" not in reason.description


# Modules that raise dead-letter reasons: the codec (and the JSON form of the contract), the
# rules with pin and names, and the workers' own fallbacks.
RAISING_MODULES = (
    "popsync/contract/codec.py",
    "popsync/contract/json_form.py",
    "popsync/domain/rules.py",
    "popsync/domain/pin.py",
    "popsync/domain/names.py",
    "popsync/runtime/processing.py",
    "popsync/trust/verification.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/*.py")),
)
RAISERS = {"RuleViolation", "DecodeError", "PinError", "InvalidName", "TrustViolation"}
CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"))


def _raised_codes(tree: ast.Module) -> set[str]:
    """The literal codes given to a raiser (so one-word codes, e.g. UNSIGNED, count too)."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in RAISERS
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def _code_literals(tree: ast.Module) -> set[str]:
    """Every string literal shaped like a reason code, except the names in `__all__`, and
    every literal code given to a raiser."""
    exported: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported |= {id(c) for c in ast.walk(node.value)}
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and CODE.fullmatch(node.value)
        and id(node) not in exported
    } | _raised_codes(tree)


def test_every_code_in_the_raising_modules_is_catalogued() -> None:
    for path in RAISING_MODULES:
        assert _code_literals(_tree(path)) <= set(REASONS), path


def test_every_catalogued_code_is_raised_somewhere() -> None:
    literals = set().union(*(_code_literals(_tree(path)) for path in RAISING_MODULES))
    assert set(REASONS) <= literals
    merge = _code_literals(_tree("popsync/domain/merge.py"))
    assert set(CONFLICTS) <= merge


def test_no_reason_code_is_built_at_run_time() -> None:
    """Codes are literals (or names of literals, or a caught error's `.reason` passed on), so
    the two tests above see every one of them."""
    for path in RAISING_MODULES:
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in RAISERS and node.args:
                code = node.args[0]
            elif name == "_reject" and len(node.args) > 1:  # the validator's dead letter
                code = node.args[1]
            else:
                continue
            passed_on = isinstance(code, ast.Attribute) and code.attr == "reason"
            assert isinstance(code, ast.Constant | ast.Name) or passed_on, (
                f"{path}:{node.lineno}: reason code built at run time"
            )
