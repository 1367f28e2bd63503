"""The stream simulator: determinism, exact validator verdicts, realism, coherent life stories."""

from __future__ import annotations

import json
import random
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.contract.json_form import event_from_json, event_to_json
from popsync.dev.simulate.generator import (
    INVALID_REASONS,
    MERGER_DATE,
    SimulatedMessage,
    simulate,
    stats,
    write_avro_container,
    write_jsonl,
)
from popsync.dev.simulate.names import (
    GIVEN_NAMES,
    MIDDLE_NAMES,
    SURNAMES,
    random_full_name,
    random_name,
)
from popsync.domain.merge import fold
from popsync.domain.pin import parse_pin
from popsync.domain.provinces import CURRENT_PROVINCES, LEGACY_PROVINCES, resolve_province
from popsync.domain.rules import RuleViolation, check_event

NOW = datetime(2025, 11, 23, 8, 30, tzinfo=UTC)
SKEW = timedelta(minutes=5)
CITIZENS = 2000
MERGED_AWAY = set(LEGACY_PROVINCES) - set(CURRENT_PROVINCES)
REQUIRED_REASONS = {
    "PIN_CENTURY_GENDER_MISMATCH",
    "ADDRESS_PROVINCE_UNKNOWN",
    "OCCURRED_IN_FUTURE",
    "DATE_IN_FUTURE",
    "DEATH_BEFORE_BIRTH",
    "SOURCE_NOT_AUTHORITATIVE",
    "KEY_PIN_MISMATCH",
    "NAME_CONTROL_CHARS",
    "COMMUNE_CODE_MALFORMED",
}


def verdict(message: SimulatedMessage) -> m.RegistryEvent | RuleViolation:
    try:
        return check_event(message.event, message.key, NOW, SKEW)
    except RuleViolation as exc:
        return exc


def legal_date(payload: Any) -> date | None:
    """The date in the payload that the event's occurred_at must fall on; None for a sector
    record, whose payload has no date of its own (it happened when the sector registered it)."""
    if isinstance(payload, m.SectorRecordRegistered):
        return None
    names = ("birth_date", "death_date", "marriage_date", "divorce_date", "effective_date")
    for name in (*names, "decision_date"):
        if hasattr(payload, name):
            value: date = getattr(payload, name)
            return value
    issue: date = payload.card.issue_date
    return issue


def add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def fold_citizens(
    messages: list[SimulatedMessage],
) -> dict[str, tuple[m.CitizenSnapshot, dict[str, Any], list[m.RegistryEvent]]]:
    """Each citizen's validated events (re-sends dropped) folded like the synchronizer does."""
    by_pin: dict[str, dict[str, m.RegistryEvent]] = defaultdict(dict)
    for message in messages:
        if message.expected_reason is None:
            normalized = check_event(message.event, message.key, NOW, SKEW)
            assert normalized.subject_pin is not None
            by_pin[normalized.subject_pin][normalized.event_id] = normalized
    result = {}
    for pin, events in by_pin.items():
        snapshot, conflicts = fold(pin, events.values())
        result[pin] = (snapshot, dict(conflicts), list(events.values()))
    return result


@pytest.fixture(scope="module")
def stream() -> list[SimulatedMessage]:
    return simulate(CITIZENS, seed=2025, now=NOW)


@pytest.fixture(scope="module")
def valid(stream: list[SimulatedMessage]) -> list[m.RegistryEvent]:
    return [message.event for message in stream if message.expected_reason is None]


@pytest.fixture(scope="module")
def births(valid: list[m.RegistryEvent]) -> dict[str, m.BirthRegistered]:
    return {
        e.subject_pin: e.payload
        for e in valid
        if isinstance(e.payload, m.BirthRegistered) and e.subject_pin is not None
    }


@pytest.fixture(scope="module")
def folded(
    stream: list[SimulatedMessage],
) -> dict[str, tuple[m.CitizenSnapshot, dict[str, Any], list[m.RegistryEvent]]]:
    return fold_citizens(stream)


# ---- determinism


def test_same_seed_and_now_give_the_same_stream() -> None:
    first = simulate(300, seed=7, now=NOW)
    assert first == simulate(300, seed=7, now=NOW)
    assert first != simulate(300, seed=8, now=NOW)


def test_ratios_do_not_change_the_citizens_stories() -> None:
    plain = simulate(300, seed=7, now=NOW, invalid_ratio=0, duplicate_ratio=0, reorder_ratio=0)
    noisy = simulate(300, seed=7, now=NOW, invalid_ratio=0.2, duplicate_ratio=0.3)
    assert all(message.expected_reason is None for message in plain)
    stories = {msg.event.event_id: msg.event.payload for msg in plain}
    assert stories == {
        msg.event.event_id: msg.event.payload for msg in noisy if msg.expected_reason is None
    }


def test_zero_citizens_give_an_empty_stream() -> None:
    assert simulate(0, seed=1, now=NOW) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"citizens": -1},
        {"now": datetime(2025, 11, 23, 8, 30)},  # naive
        {"now": datetime(1930, 1, 1, tzinfo=UTC)},
        {"invalid_ratio": 1.0},
        {"duplicate_ratio": -0.1},
        {"reorder_ratio": 1.5},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"citizens": 10, "seed": 1, "now": NOW, **kwargs}
    with pytest.raises(ValueError):
        simulate(**arguments)


# ---- verdicts


def test_every_expected_valid_message_passes_the_validator(
    stream: list[SimulatedMessage],
) -> None:
    rejected = Counter(
        result.reason
        for message in stream
        if message.expected_reason is None and isinstance(result := verdict(message), RuleViolation)
    )
    assert rejected == Counter()


def test_every_invalid_message_fails_with_exactly_its_reason(
    stream: list[SimulatedMessage],
) -> None:
    invalid = [message for message in stream if message.expected_reason is not None]
    outcomes = Counter(
        (message.expected_reason, getattr(verdict(message), "reason", "ACCEPTED"))
        for message in invalid
    )
    assert all(expected == got for expected, got in outcomes), outcomes
    seen = {message.expected_reason for message in invalid}
    assert seen == set(INVALID_REASONS)
    assert seen >= REQUIRED_REASONS


def test_invalid_events_are_about_one_percent_and_use_fresh_ids(
    stream: list[SimulatedMessage],
) -> None:
    summary = stats(stream)
    assert summary.expected_invalid / summary.total == pytest.approx(0.01, abs=0.002)
    valid_ids = {msg.event.event_id for msg in stream if msg.expected_reason is None}
    invalid_ids = [msg.event.event_id for msg in stream if msg.expected_reason is not None]
    assert len(set(invalid_ids)) == len(invalid_ids)
    assert not valid_ids & set(invalid_ids)


def test_valid_messages_are_keyed_by_the_subject_pin(stream: list[SimulatedMessage]) -> None:
    for message in stream:
        if message.expected_reason is None:
            assert message.event.subject_pin is not None
            assert message.key == message.event.subject_pin.encode()


# ---- contract


def test_every_event_is_a_valid_contract_record(stream: list[SimulatedMessage]) -> None:
    for message in stream:
        event = message.event
        again = m.RegistryEvent.model_validate(event.model_dump())
        assert again == event
        assert type(again.payload) is type(event.payload)


def test_events_survive_the_avro_codec(stream: list[SimulatedMessage]) -> None:
    codec = Codec(m.RegistryEvent)
    for message in random.Random(1).sample(stream, 500):
        assert codec.decode(codec.encode(message.event)) == message.event


def test_write_jsonl_round_trips(stream: list[SimulatedMessage], tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sample = stream[:400]
    assert write_jsonl(sample, path) == len(sample)
    raw = path.read_bytes().decode("utf-8")
    assert "\\u" not in raw.replace("\\u0000", "")  # diacritics written as UTF-8, not escaped
    lines = raw.splitlines()
    assert [event_from_json(json.loads(line)) for line in lines] == [
        message.event for message in sample
    ]
    assert json.loads(lines[0]) == event_to_json(sample[0].event)


def test_write_avro_container_round_trips_as_a_standard_container(
    stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    """What any Avro tool reads: the contract's RegistryEvent schema in the header, each
    event a record of it, the same events as the JSON-lines form."""
    import fastavro

    from popsync.contract.codec import from_avro_datum
    from popsync.contract.schemas import contract_schema

    path = tmp_path / "archive.avro"
    sample = stream[:400]
    assert write_avro_container(sample, path) == len(sample)
    with path.open("rb") as handle:
        reader = fastavro.reader(handle, return_record_name=True)
        assert reader.writer_schema["name"] == contract_schema("RegistryEvent").parsed["name"]
        assert reader.codec == "deflate"
        events = [from_avro_datum(m.RegistryEvent, record) for record in reader]
    assert events == [message.event for message in sample]


# ---- realism


def test_all_text_is_nfc(stream: list[SimulatedMessage]) -> None:
    for message in stream:
        for text in strings(event_to_json(message.event)):
            assert unicodedata.is_normalized("NFC", text), text


def test_all_34_current_provinces_publish(valid: list[m.RegistryEvent]) -> None:
    publishing = {resolve_province(event.source_province).current.code for event in valid}
    assert publishing == set(CURRENT_PROVINCES)


def test_legacy_codes_appear_in_realistic_shares(
    valid: list[m.RegistryEvent], births: dict[str, m.BirthRegistered]
) -> None:
    before_merger = [pin for pin, birth in births.items() if birth.birth_date < MERGER_DATE]
    legacy_pins = [pin for pin in before_merger if pin[1:3] in MERGED_AWAY]
    assert len(legacy_pins) / len(before_merger) == pytest.approx(0.30, abs=0.04)
    assert all(births[pin].birthplace_province == pin[1:3] for pin in legacy_pins)
    after_merger = [pin for pin, birth in births.items() if birth.birth_date >= MERGER_DATE]
    assert all(pin[1:3] in CURRENT_PROVINCES for pin in after_merger)

    addresses = [
        e.payload.address
        for e in valid
        if isinstance(e.payload, m.PermanentResidenceRegistered | m.TemporaryResidenceRegistered)
    ]
    legacy_addresses = sum(address.province_code in MERGED_AWAY for address in addresses)
    assert legacy_addresses / len(addresses) == pytest.approx(0.10, abs=0.03)
    assert all(len(address.commune_code) == 5 for address in addresses)
    assert any(event.source_province in MERGED_AWAY for event in valid)


def test_pins_are_unique_and_births_spread_since_1935(
    stream: list[SimulatedMessage], births: dict[str, m.BirthRegistered]
) -> None:
    assert len(births) == CITIZENS == stats(stream).distinct_citizens
    years = [birth.birth_date.year for birth in births.values()]
    assert min(years) < 1945 and max(years) == NOW.year
    for pin, birth in births.items():
        assert parse_pin(pin).birth_year == birth.birth_date.year


def test_deaths_are_about_five_percent_and_mostly_old(
    valid: list[m.RegistryEvent], births: dict[str, m.BirthRegistered]
) -> None:
    ages = [
        (e.payload.death_date - births[e.subject_pin].birth_date).days / 365.25
        for e in {e.event_id: e for e in valid}.values()
        if isinstance(e.payload, m.DeathRegistered) and e.subject_pin is not None
    ]
    assert len(ages) / CITIZENS == pytest.approx(0.05, abs=0.015)
    assert statistics.median(ages) >= 60


def test_ages_allow_each_step_of_life(
    valid: list[m.RegistryEvent], births: dict[str, m.BirthRegistered]
) -> None:
    for event in valid:
        assert event.subject_pin is not None
        birth = births[event.subject_pin].birth_date
        payload = event.payload
        if isinstance(payload, m.SectorRecordRegistered):  # registered when they worked
            assert payload.birth_date == birth
            assert add_years(birth, 18) <= event.occurred_at.date() <= add_years(birth, 60)
        if isinstance(payload, m.IdCardIssued):
            assert payload.card.card_number == event.subject_pin
            assert payload.card.issue_date >= add_years(birth, 14)
        if isinstance(payload, m.MarriageRegistered):
            assert payload.marriage_date >= add_years(birth, 20)
            if payload.spouse_pin is not None:
                spouse = births[payload.spouse_pin]
                assert spouse.sex is not births[event.subject_pin].sex
                assert payload.marriage_date >= add_years(spouse.birth_date, 20)


def test_times_are_plausible(stream: list[SimulatedMessage], valid: list[m.RegistryEvent]) -> None:
    for event in valid:
        assert legal_date(event.payload) in (event.occurred_at.date(), None)
        assert event.occurred_at <= event.recorded_at <= NOW
        assert event.recorded_at - event.occurred_at <= timedelta(days=10)
    assert sum(event.correlation_id is not None for event in valid) > 0
    # source_sequence counts each registry's events in the order it recorded them
    originals = {msg.event.event_id: msg.event for msg in stream}.values()
    by_source: dict[tuple[str, str], list[m.RegistryEvent]] = defaultdict(list)
    for event in originals:
        by_source[(event.source_registry.value, event.source_province)].append(event)
    for events in by_source.values():
        events.sort(key=lambda e: e.source_sequence)
        assert [e.source_sequence for e in events] == list(range(1, len(events) + 1))
        recorded = [e.recorded_at for e in events]
        assert recorded == sorted(recorded)


def test_duplicates_are_exact_copies_sent_later(stream: list[SimulatedMessage]) -> None:
    first_seen: dict[str, tuple[int, SimulatedMessage]] = {}
    copies = 0
    for position, message in enumerate(stream):
        earlier = first_seen.get(message.event.event_id)
        if earlier is None:
            first_seen[message.event.event_id] = (position, message)
            continue
        copies += 1
        assert earlier[0] < position
        assert message == earlier[1]
        assert event_to_json(message.event) == event_to_json(earlier[1].event)
    originals = sum(1 for _, message in first_seen.values() if message.expected_reason is None)
    assert copies == stats(stream).duplicates
    assert copies / originals == pytest.approx(0.02, abs=0.002)


def test_some_events_arrive_out_of_order(stream: list[SimulatedMessage]) -> None:
    last: dict[bytes | None, datetime] = {}
    overtaken = 0
    for message in stream:
        if message.expected_reason is not None:
            continue
        previous = last.get(message.key)
        if previous is not None and message.event.recorded_at < previous:
            overtaken += 1
        last[message.key] = max(previous or message.event.recorded_at, message.event.recorded_at)
    assert overtaken > 0
    ordered = simulate(200, seed=3, now=NOW, duplicate_ratio=0, reorder_ratio=0)
    recorded = [message.event.recorded_at for message in ordered]
    assert recorded == sorted(recorded)


# ---- coherence


def test_stories_fold_without_conflicts(
    folded: dict[str, tuple[m.CitizenSnapshot, dict[str, Any], list[m.RegistryEvent]]],
) -> None:
    conflicts = Counter(
        conflict.code for _, found, _ in folded.values() for conflict in found.values()
    )
    assert conflicts == Counter()
    assert len(folded) == CITIZENS


def test_the_dead_are_deceased_and_nothing_follows_their_death(
    folded: dict[str, tuple[m.CitizenSnapshot, dict[str, Any], list[m.RegistryEvent]]],
) -> None:
    dead = annulled = 0
    for snapshot, _, events in folded.values():
        deaths = [e for e in events if isinstance(e.payload, m.DeathRegistered)]
        annulments = [e for e in events if isinstance(e.payload, m.DeathAnnulled)]
        if annulments:  # a death registered in error: void, the citizen lives on
            annulled += 1
            assert len(deaths) == len(annulments) == 1
            assert snapshot.life_status is m.LifeStatus.ALIVE and snapshot.death_date is None
            continue
        if not deaths:
            assert snapshot.life_status is m.LifeStatus.ALIVE
            continue
        dead += 1
        (death,) = deaths
        assert isinstance(death.payload, m.DeathRegistered)
        assert snapshot.life_status is m.LifeStatus.DECEASED
        assert snapshot.death_date == death.payload.death_date
        assert all(e.occurred_at < death.occurred_at for e in events if e is not death)
    assert dead > 0 and annulled > 0


def test_spouses_agree_and_children_know_their_parents(
    folded: dict[str, tuple[m.CitizenSnapshot, dict[str, Any], list[m.RegistryEvent]]],
    births: dict[str, m.BirthRegistered],
    valid: list[m.RegistryEvent],
) -> None:
    renames: dict[str, list[tuple[date, str]]] = defaultdict(list)
    for event in valid:
        if isinstance(event.payload, m.CivilStatusChanged) and event.subject_pin:
            assert event.payload.new_full_name is not None
            renames[event.subject_pin].append(
                (event.payload.effective_date, event.payload.new_full_name)
            )

    def name_on(pin: str, day: date) -> str:
        changes = sorted(change for change in renames[pin] if change[0] <= day)
        return changes[-1][1] if changes else births[pin].full_name

    for event in valid:
        payload = event.payload
        if isinstance(payload, m.MarriageRegistered) and payload.spouse_pin is not None:
            assert payload.spouse_full_name == name_on(payload.spouse_pin, payload.marriage_date)

    married = 0
    for pin, (snapshot, _, _) in folded.items():
        if snapshot.marital_status is m.MaritalStatus.MARRIED and snapshot.spouse_pin:
            married += 1
            spouse, _, _ = folded[snapshot.spouse_pin]
            assert spouse.spouse_pin == pin
    assert married > CITIZENS // 10
    linked = [birth for birth in births.values() if birth.father_pin is not None]
    assert linked
    for birth in linked:
        assert birth.father_pin is not None and birth.mother_pin is not None
        father, mother = births[birth.father_pin], births[birth.mother_pin]
        assert father.sex is m.Sex.M and mother.sex is m.Sex.F
        assert mother.birth_date.year + 18 <= birth.birth_date.year


def test_statistics_add_up(stream: list[SimulatedMessage]) -> None:
    summary = stats(stream)
    assert summary.total == len(stream) == summary.expected_valid + summary.expected_invalid
    assert sum(summary.by_event_type.values()) == summary.total
    assert sum(summary.by_source_province.values()) == summary.total
    assert sum(summary.by_expected_reason.values()) == summary.expected_invalid
    assert set(summary.by_event_type) == {t.value for t in m.EventType} - {"UNKNOWN"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    citizens=st.integers(min_value=1, max_value=25),
    invalid_ratio=st.sampled_from([0.0, 0.1, 0.5]),
    reorder_ratio=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_any_small_stream_keeps_its_promises(
    seed: int, citizens: int, invalid_ratio: float, reorder_ratio: float
) -> None:
    messages = simulate(
        citizens,
        seed=seed,
        now=NOW,
        invalid_ratio=invalid_ratio,
        duplicate_ratio=0.2,
        reorder_ratio=reorder_ratio,
    )
    for message in messages:
        result = verdict(message)
        got = result.reason if isinstance(result, RuleViolation) else None
        assert got == message.expected_reason
    for _, conflicts, _ in fold_citizens(messages).values():
        assert conflicts == {}


# ---- names


def test_name_tables_are_nfc_and_large_enough() -> None:
    for pool in (SURNAMES, *MIDDLE_NAMES.values(), *GIVEN_NAMES.values()):
        assert all(unicodedata.is_normalized("NFC", item) for item in pool.items)
    assert all(len(pool.items) >= 40 for pool in GIVEN_NAMES.values())
    rng = random.Random(3)
    expected = {"M": {"Văn", "Hữu", "Đức", "Minh", "Quang"}, "F": {"Thị", "Ngọc", "Thu", "Thanh"}}
    for sex, middles in expected.items():
        drawn = {random_name(rng, sex, birth_year=1935 + i % 90).middle[0] for i in range(3000)}
        assert middles | {"Kim" if sex == "F" else "Công"} <= drawn
    assert SURNAMES.share("Nguyễn") == pytest.approx(0.38)
    assert SURNAMES.share("Hoàng") + SURNAMES.share("Huỳnh") == pytest.approx(0.05)


def test_random_names_follow_the_frequencies() -> None:
    rng = random.Random(4)
    names = [random_full_name(rng, rng.choice("MF")) for _ in range(20_000)]
    assert all(unicodedata.is_normalized("NFC", name) for name in names)
    surnames = Counter(name.split()[0] for name in names)
    assert surnames["Nguyễn"] / len(names) == pytest.approx(0.38, abs=0.015)
    assert surnames["Trần"] / len(names) == pytest.approx(0.11, abs=0.01)
    women = [random_name(rng, "F", birth_year=1950) for _ in range(2000)]
    assert sum(name.middle[0] == "Thị" for name in women) / len(women) > 0.7
    with pytest.raises(ValueError):
        random_full_name(rng, "X")
