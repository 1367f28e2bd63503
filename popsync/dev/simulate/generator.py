"""Seeded, realistic stream of registry events for demos, load tests and pipeline tests.

Every simulated citizen lives a coherent life (birth, residences, identity cards, marriages,
divorces, name changes, death, and for some a social insurance or civil servant record that
carries the PIN) that `popsync.domain.merge.fold` applies without a conflict.
On top of that the stream has what real registries produce: legacy province codes, arrival
out of order, re-sends of the same event, and a known share of invalid events, each labelled
with the exact reason `popsync.domain.rules.check_event` rejects it for. So a pipeline test
can assert the outcome of every single message instead of eyeballing totals.

Deterministic for a seed and `now`: the master `random.Random(seed)` seeds one generator for
the life stories, one for the invalid events, one for the stream shaping and one for the
sector records, so changing the invalid/duplicate/reorder ratios never changes who the
citizens are or what happens to them.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import json
import random
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias

import fastavro

from popsync.contract import models as m
from popsync.contract.codec import to_avro_datum
from popsync.contract.json_form import event_to_json
from popsync.contract.schemas import contract_schema
from popsync.dev.simulate import geography as geo
from popsync.dev.simulate._random import below, between_ints
from popsync.dev.simulate.names import PersonName, random_full_name, random_name, renamed
from popsync.domain.authority import EVENT_AUTHORITY
from popsync.domain.pin import make_pin

__all__ = [
    "FIRST_BIRTH_YEAR",
    "INVALID_REASONS",
    "MERGER_DATE",
    "SimulatedMessage",
    "StreamStats",
    "simulate",
    "stats",
    "write_jsonl",
]

Sex = Literal["M", "F"]
Payload: TypeAlias = (
    m.BirthRegistered
    | m.DeathRegistered
    | m.MarriageRegistered
    | m.DivorceRecorded
    | m.CivilStatusChanged
    | m.PermanentResidenceRegistered
    | m.TemporaryResidenceRegistered
    | m.ResidenceDeregistered
    | m.IdCardIssued
    | m.DeathAnnulled
    | m.SectorRecordRegistered
)

MERGER_DATE = date(2025, 7, 1)  # 63 provinces became 34 (Resolution 202/2025/QH15)
FIRST_BIRTH_YEAR = 1935
_CARD_ERA = date(2016, 1, 1)  # citizen identity cards numbered with the PIN from 2016
_MINISTRY_ISSUES_FROM = date(2024, 7, 1)  # Identification Law 2023: cards issued by the Ministry
_JOINT_BIRTH_PROCEDURE_FROM = date(2016, 1, 1)  # birth + residence registered in one procedure
_PIN_LEGACY_SHARE = 0.30  # of people born before the merger, born in a merged-away province
_DEATH_SHARE = 0.05
_WRONGLY_DECLARED_DEAD_SHARE = 0.003  # a death registered in error, annulled by a court
_MARRYING_SHARE = 0.85
_DIVORCE_SHARE = 0.12
_REMARRY_SHARE = 0.45
_RENAME_SHARE = 0.02
_EMIGRATION_SHARE = 0.01
_HUSBAND_OLDER_BY = (-2, -1, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7)
_CARD_MILESTONES = (25, 40, 60)  # ages at which an identity card must be renewed
_OLD_AUTHORITY = "Cục Cảnh sát quản lý hành chính về trật tự xã hội"
_MINISTRY = "Bộ Công an"
_TEMPORARY_END_REASONS = ("Chấm dứt tạm trú theo đề nghị", "Đã chuyển đi nơi khác",
                          "Hết thời hạn tạm trú")  # fmt: skip
_EMIGRATION_REASON = "Định cư ở nước ngoài"
_SOCIAL_INSURANCE_SHARE = 0.30  # of adults: a social insurance record (employment)
_CIVIL_SERVANT_SHARE = 0.05  # of adults: a civil servant record
_SECTOR_RECORDS_FROM = date(1995, 1, 1)  # social insurance as it is today started in 1995
_SECTOR_WITHOUT_MARKS = 0.15  # sector systems that drop the diacritics
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    """One message as a registry would put it on the topic, with its expected verdict.

    ``expected_reason`` is None when the validator must accept the event, else the exact
    reason code `check_event` raises for it.
    """

    key: bytes | None
    event: m.RegistryEvent
    expected_reason: str | None


@dataclass
class StreamStats:
    """Counts describing a simulated stream (for CLI output and test sanity checks).

    ``expected_valid`` includes re-sent duplicates (they pass the validator); ``duplicates``
    counts the messages whose event id appeared earlier in the stream; ``distinct_citizens``
    counts subject PINs of expected-valid messages; provinces are counted as sent (raw codes).
    """

    total: int
    expected_valid: int
    expected_invalid: int
    duplicates: int
    distinct_citizens: int
    by_event_type: dict[str, int]
    by_source_province: dict[str, int]
    by_expected_reason: dict[str, int]


# --------------------------------------------------------------------------------------------
# dates and times


def _add_years(day: date, years: int) -> date:
    """Same day ``years`` later; 29 February becomes the 28th in common years."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def _between(rng: random.Random, first: date, last: date) -> date:
    """A uniformly random day in [first, last]."""
    return date.fromordinal(between_ints(rng, first.toordinal(), last.toordinal()))


@dataclass(frozen=True)
class _Clock:
    """Turns legal dates into instants: Vietnam is UTC+7, so the local day maps to UTC hours
    00:00-17:00 of the same calendar date, keeping ``occurred_at.date()`` the legal date."""

    now: datetime  # UTC, truncated to milliseconds (the contract's timestamp precision)
    cutoff: date  # last legal date of a generated event: yesterday, so every time is past

    def occurred(self, rng: random.Random, day: date, *, office: bool = True) -> datetime:
        # Offices work 07:30-17:00 local (00:30-10:00 UTC); births and deaths happen 07-24h.
        seconds = between_ints(rng, 1800, 35999) if office else below(rng, 61200)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=seconds)

    def recorded(self, rng: random.Random, occurred_at: datetime) -> datetime:
        """A few minutes (most), hours or days after the fact; never after ``now``."""
        draw = rng.random()
        if draw < 0.6:
            lag = between_ints(rng, 120, 3 * 3600)
        elif draw < 0.9:
            lag = between_ints(rng, 3 * 3600, 3 * 86400)
        else:
            lag = between_ints(rng, 3 * 86400, 10 * 86400)
        return min(occurred_at + timedelta(seconds=lag), self.now)


# --------------------------------------------------------------------------------------------
# the simulated population


@dataclass(eq=False)
class _Marriage:
    """One marriage, shared by both spouses when the spouse is simulated too."""

    start: date
    a: _Citizen
    b: _Citizen | None  # None: a spouse from outside the simulation (no PIN)
    outsider_name: str  # the outside spouse's name; empty when ``b`` is simulated
    province: str
    registration_number: str
    correlation_id: str | None
    divorce: date | None = None
    divorce_province: str = ""
    court_decision_number: str = ""
    divorce_correlation_id: str | None = None
    children: list[_Citizen] = field(default_factory=list)

    def spouse_of(self, person: _Citizen) -> _Citizen | None:
        return self.b if self.a is person else self.a


@dataclass(eq=False)
class _Citizen:
    index: int  # position in the population, tags the citizen's drafts for reordering
    pin: str
    key: bytes  # the message key of every valid event: the PIN as bytes
    sex: Sex
    birth: date
    end: date  # exclusive bound of everything but the death itself: death day or cutoff + 1
    death: date | None
    ethnicity: str
    name: PersonName
    birth_place: geo.Place
    father_pin: str | None = None
    mother_pin: str | None = None
    birth_correlation_id: str | None = None
    wed_target: date | None = None
    homes: list[tuple[date, geo.Place]] = field(default_factory=list)
    renames: list[tuple[date, PersonName]] = field(default_factory=list)
    marriages: list[_Marriage] = field(default_factory=list)

    def place_at(self, day: date) -> geo.Place:
        """Permanent residence in force on ``day`` (the birthplace before the first one)."""
        for since, place in reversed(self.homes):
            if since <= day:
                return place
        return self.birth_place

    def name_at(self, day: date) -> PersonName:
        for since, name in reversed(self.renames):
            if since <= day:
                return name
        return self.name


@dataclass(slots=True)
class _Draft:
    """An event before the stream is ordered (source sequences follow recorded_at order)."""

    recorded_at: datetime
    order: int
    registry: m.SourceRegistry
    province: str
    event_type: m.EventType
    pin: str
    occurred_at: datetime
    payload: Payload
    event_id: str
    correlation_id: str | None
    key: bytes | None
    expected_reason: str | None
    citizen: int  # index of the citizen whose story it belongs to; -1 for invalid extras


def _address(place: geo.Place) -> m.Address:
    return m.Address.model_construct(
        province_code=place.code,
        legacy_province_code=None,  # registries send the raw code; the validator fills it
        commune_code=place.commune,
        address_line=place.line,
    )


def _card_expiry(birth: date, issue: date) -> date | None:
    """Cards expire at 25, 40 and 60; one issued within 2 years before such an age lasts
    until the next one, and one issued from 58 on is valid for life."""
    for age in _CARD_MILESTONES:
        if issue < _add_years(birth, age - 2):
            return _add_years(birth, age)
    return None


def _authority(issue: date) -> str:
    return _OLD_AUTHORITY if issue < _MINISTRY_ISSUES_FROM else _MINISTRY


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _sole_authority(event_type: m.EventType) -> m.SourceRegistry:
    """The one registry that publishes ``event_type`` (sector records name theirs)."""
    (registry,) = EVENT_AUTHORITY[event_type]
    return registry


def _without_marks(name: str) -> str:
    """A name as a system without Vietnamese diacritics stores it (đ -> d)."""
    stripped = "".join(
        ch for ch in unicodedata.normalize("NFD", name) if unicodedata.category(ch) != "Mn"
    )
    return unicodedata.normalize("NFC", stripped.replace("đ", "d").replace("Đ", "D"))


class _World:
    """Builds the citizens and their valid events, phase by phase, from one generator."""

    def __init__(self, rng: random.Random, clock: _Clock) -> None:
        self.rng = rng
        self.clock = clock
        self.citizens: list[_Citizen] = []
        self.drafts: list[_Draft] = []
        self._pins: set[str] = set()

    # ---- emission

    def emit(
        self,
        citizen: _Citizen,
        event_type: m.EventType,
        province: str,
        day: date,
        payload: Payload,
        *,
        office: bool = True,
        correlation_id: str | None = None,
        registry: m.SourceRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Queue one valid event, published by the registry that is authoritative for it
        (``registry`` where several are); drawn from ``rng`` (default: the stories')."""
        rng = rng or self.rng
        occurred_at = self.clock.occurred(rng, day, office=office)
        self.drafts.append(
            _Draft(
                recorded_at=self.clock.recorded(rng, occurred_at),
                order=len(self.drafts),
                registry=registry or _sole_authority(event_type),
                province=province,
                event_type=event_type,
                pin=citizen.pin,
                occurred_at=occurred_at,
                payload=payload,
                event_id=_uuid(rng),
                correlation_id=correlation_id,
                key=citizen.key,
                expected_reason=None,
                citizen=citizen.index,
            )
        )

    # ---- phase 1: who is born where and when, and who dies when

    def populate(self, count: int) -> None:
        rng, cutoff = self.rng, self.clock.cutoff
        years = list(range(FIRST_BIRTH_YEAR, cutoff.year + 1))
        # Few survivors of the 1930s-50s, the post-1975 baby boom, slightly fewer births lately.
        weights = [
            (0.45 if y < 1955 else min(1.0, 0.45 + (y - 1955) * 0.0275) if y < 2012 else 0.9)
            * ((cutoff - date(y, 1, 1)).days + 1 if y == cutoff.year else 365)
            for y in years
        ]
        cumulative = list(itertools.accumulate(weights))
        for _ in range(count):
            year = years[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
            birth = _between(rng, date(year, 1, 1), min(date(year, 12, 31), cutoff))
            sex: Sex = "M" if rng.random() < 0.503 else "F"
            if birth < MERGER_DATE:
                # The PIN keeps the province of registration at the time: a merged-away code
                # for about 30% of people born before the merger.
                unit = geo.pick_unit(rng, "merged" if rng.random() < _PIN_LEGACY_SHARE else "kept")
                code = unit
            else:
                unit = geo.pick_unit(rng)
                code = geo.current_of(unit)
            ethnicity = geo.pick_ethnicity(rng, geo.current_of(unit))
            pin = self._new_pin(code, sex, birth.year)
            citizen = _Citizen(
                index=len(self.citizens),
                pin=pin,
                key=pin.encode(),
                sex=sex,
                birth=birth,
                end=cutoff + _DAY,
                death=None,
                ethnicity=ethnicity,
                name=random_name(rng, sex, ethnicity=ethnicity, birth_year=birth.year),
                birth_place=geo.Place(
                    unit=unit,
                    code=code,
                    commune=geo.commune_code(rng, unit),
                    line=geo.address_line(rng, unit),
                ),
            )
            self.citizens.append(citizen)
        self._deaths()

    def _new_pin(self, code: str, sex: Sex, year: int) -> str:
        while True:
            pin = make_pin("0" + code, sex, year, below(self.rng, 1_000_000)).value
            if pin not in self._pins:
                self._pins.add(pin)
                return pin

    def _deaths(self) -> None:
        """About 5% die, mostly the old: the chance grows with the 4th power of age, and the
        death is recent (up to 20 years back, at most a third of the life), so most people
        who die do so old."""
        rng, cutoff = self.rng, self.clock.cutoff
        ages = [(cutoff - c.birth).days for c in self.citizens]
        weights = [(age / 36525) ** 4 + 0.005 for age in ages]
        scale = _DEATH_SHARE * len(self.citizens) / sum(weights) if weights else 0.0
        for citizen, age, weight in zip(self.citizens, ages, weights, strict=True):
            if age < 2 or rng.random() >= min(0.9, weight * scale):
                continue
            days_ago = int(rng.random() ** 1.5 * min(age / 3, 20 * 365.25))
            citizen.death = cutoff - timedelta(days=min(days_ago, age - 1))
            citizen.end = citizen.death

    # ---- phase 2: residence and identity cards (independent of names and marriages)

    def residences(self, citizen: _Citizen) -> None:
        rng = self.rng
        first = citizen.birth + timedelta(days=between_ints(rng, 3, 60))
        if first >= citizen.end:
            return
        home = geo.Place.draw(rng, citizen.birth_place.unit)
        if citizen.birth >= _JOINT_BIRTH_PROCEDURE_FROM and rng.random() < 0.7:
            citizen.birth_correlation_id = _uuid(rng)
        self._register_home(citizen, first, home, citizen.birth_correlation_id)
        last = first
        adult = _add_years(citizen.birth, 18)
        if adult >= citizen.end:
            return
        adult_days = (citizen.end - adult).days
        moves = sum(rng.random() < 0.4 for _ in range(1 + adult_days // 3652))
        for day in sorted(adult + timedelta(days=below(rng, adult_days)) for _ in range(moves)):
            if day <= last + timedelta(days=30):
                continue
            # A move within the province (new commune) or to another one, cities pulling most.
            unit = home.unit if rng.random() < 0.55 else geo.pick_unit(rng, "migration")
            home = geo.Place.draw(rng, unit)
            self._register_home(citizen, day, home, None)
            last = day
        last = max(last, self._temporary_stays(citizen, adult))
        if rng.random() < _EMIGRATION_SHARE and last + timedelta(days=31) < citizen.end:
            day = _between(rng, last + timedelta(days=31), citizen.end - _DAY)
            payload = m.ResidenceDeregistered.model_construct(
                residence_kind=m.ResidenceKind.PERMANENT,
                effective_date=day,
                reason=_EMIGRATION_REASON,
            )
            self.emit(
                citizen,
                m.EventType.RESIDENCE_DEREGISTERED,
                citizen.place_at(day).code,
                day,
                payload,
            )

    def _register_home(
        self, citizen: _Citizen, day: date, place: geo.Place, correlation_id: str | None
    ) -> None:
        citizen.homes.append((day, place))
        payload = m.PermanentResidenceRegistered.model_construct(
            address=_address(place), effective_date=day
        )
        self.emit(
            citizen,
            m.EventType.PERMANENT_RESIDENCE_REGISTERED,
            place.code,
            day,
            payload,
            correlation_id=correlation_id,
        )

    def _temporary_stays(self, citizen: _Citizen, adult: date) -> date:
        """Study or work elsewhere between 18 and 40: one or two non-overlapping stays.

        Returns the last day touched, so a later emigration cannot precede it.
        """
        rng = self.rng
        window_end = min(_add_years(citizen.birth, 40), citizen.end)
        last = adult
        if adult >= window_end or rng.random() >= 0.35:
            return last
        start = _between(rng, adult, window_end - _DAY)
        for _ in range(2):
            home_province = geo.current_of(citizen.place_at(start).unit)
            unit = geo.pick_unit(rng, "migration")
            for _retry in range(3):
                if geo.current_of(unit) != home_province:
                    break
                unit = geo.pick_unit(rng, "migration")
            place = geo.Place.draw(rng, unit)
            years = rng.choice((1, 1, 2, 2, 3)) if rng.random() < 0.75 else None
            valid_until = _add_years(start, years) - _DAY if years else None
            payload = m.TemporaryResidenceRegistered.model_construct(
                address=_address(place), effective_date=start, valid_until=valid_until
            )
            self.emit(
                citizen, m.EventType.TEMPORARY_RESIDENCE_REGISTERED, place.code, start, payload
            )
            last = start
            stop = valid_until or _add_years(start, 3)
            after = stop
            if rng.random() < 0.6:
                day = start + timedelta(days=between_ints(rng, 30, (stop - start).days))
                if day >= citizen.end:
                    return last
                reason = _TEMPORARY_END_REASONS[below(rng, len(_TEMPORARY_END_REASONS))]
                ended = m.ResidenceDeregistered.model_construct(
                    residence_kind=m.ResidenceKind.TEMPORARY, effective_date=day, reason=reason
                )
                self.emit(citizen, m.EventType.RESIDENCE_DEREGISTERED, place.code, day, ended)
                last = after = day
            if rng.random() >= 0.3:
                break
            start = after + timedelta(days=between_ints(rng, 30, 700))
            if start >= window_end:
                break
        return last

    def id_cards(self, citizen: _Citizen) -> None:
        """First card at 14 (or when PIN-numbered cards arrived), renewed at 25/40/60."""
        rng = self.rng
        age14 = _add_years(citizen.birth, 14)
        if age14 >= _CARD_ERA:
            issue = age14 + timedelta(days=between_ints(rng, 0, 730))
        else:
            draw = rng.random()  # most adults changed cards in the 2021 chip-card campaign
            if draw < 0.3:
                issue = _between(rng, _CARD_ERA, date(2020, 12, 31))
            elif draw < 0.9:
                issue = _between(rng, date(2021, 1, 1), date(2021, 12, 31))
            else:
                issue = _between(rng, date(2022, 1, 1), date(2024, 12, 31))
        while issue < citizen.end:
            expiry = _card_expiry(citizen.birth, issue)
            card = m.IdCard.model_construct(
                card_number=citizen.pin,
                issue_date=issue,
                expiry_date=expiry,
                issuing_authority=_authority(issue),
            )
            self.emit(
                citizen,
                m.EventType.ID_CARD_ISSUED,
                citizen.place_at(issue).code,
                issue,
                m.IdCardIssued.model_construct(card=card),
            )
            if expiry is None:
                return
            issue = expiry + timedelta(days=between_ints(rng, 0, 120))

    # ---- phase 3: marriages, divorces and remarriages

    def marriages(self) -> None:
        rng = self.rng
        buckets: dict[tuple[Sex, int], list[_Citizen]] = defaultdict(list)
        seekers: list[_Citizen] = []
        for citizen in self.citizens:
            age20 = _add_years(citizen.birth, 20)
            if age20 >= citizen.end or rng.random() >= _MARRYING_SHARE:
                continue
            target = age20 + timedelta(days=int(rng.gammavariate(2.0, 2.0) * 365.25))
            if target >= citizen.end:
                continue
            citizen.wed_target = target
            seekers.append(citizen)
            buckets[(citizen.sex, citizen.birth.year)].append(citizen)
        rng.shuffle(seekers)
        for bucket in buckets.values():
            rng.shuffle(bucket)
        for citizen in seekers:
            if citizen.marriages or citizen.wed_target is None:
                continue
            found = self._partner(citizen, buckets)
            if found is None:
                self._wed(citizen, None, citizen.wed_target, divorce_allowed=True)
            else:
                self._wed(citizen, found[0], found[1], divorce_allowed=True)

    def _partner(
        self, citizen: _Citizen, buckets: dict[tuple[Sex, int], list[_Citizen]]
    ) -> tuple[_Citizen, date] | None:
        """An unmarried simulated partner of the other sex and a plausible age; both >= 20."""
        target = citizen.wed_target
        if target is None:
            return None
        rng = self.rng
        other: Sex = "F" if citizen.sex == "M" else "M"
        for _ in range(8):
            gap = _HUSBAND_OLDER_BY[below(rng, len(_HUSBAND_OLDER_BY))]
            year = citizen.birth.year + (gap if citizen.sex == "M" else -gap)
            bucket = buckets.get((other, year))
            if not bucket:
                continue
            while bucket and bucket[-1].marriages:  # drop the already married lazily
                bucket.pop()
            for position in range(len(bucket) - 1, max(-1, len(bucket) - 4), -1):
                candidate = bucket[position]
                if candidate.marriages or candidate.wed_target is None:
                    continue
                day = max(target, candidate.wed_target)
                if day < citizen.end and day < candidate.end:
                    bucket.pop(position)
                    return candidate, day
        return None

    def _wed(self, a: _Citizen, b: _Citizen | None, day: date, *, divorce_allowed: bool) -> None:
        rng = self.rng
        outsider = ""
        if b is None:
            outsider = random_full_name(rng, "F" if a.sex == "M" else "M", birth_year=a.birth.year)
        marriage = _Marriage(
            start=day,
            a=a,
            b=b,
            outsider_name=outsider,
            province=a.place_at(day).code,  # registered where one spouse resides
            registration_number=f"{between_ints(rng, 1, 400)}/{day.year}",
            correlation_id=_uuid(rng) if b is not None else None,
        )
        a.marriages.append(marriage)
        if b is not None:
            b.marriages.append(marriage)
        if not divorce_allowed or rng.random() >= _DIVORCE_SHARE:
            return
        divorce = day + timedelta(days=between_ints(rng, 365, 15 * 365))
        if divorce >= min(a.end, b.end if b is not None else a.end):
            return
        marriage.divorce = divorce
        marriage.divorce_province = a.place_at(divorce).code
        marriage.court_decision_number = f"{between_ints(rng, 1, 999)}/{divorce.year}/QĐST-HNGĐ"
        marriage.divorce_correlation_id = _uuid(rng) if b is not None else None
        for person in (a, b):
            if person is None or rng.random() >= _REMARRY_SHARE:
                continue
            again = divorce + timedelta(days=between_ints(rng, 365, 6 * 365))
            if again < person.end:  # remarriage outside the simulation, never divorced again
                self._wed(person, None, again, divorce_allowed=False)

    # ---- phase 4: parents, then names

    def parents(self) -> None:
        """Link some children born to a simulated couple while it was married.

        The child takes the father's surname (the mother's clan name for Ê Đê, who are
        matrilineal) and the ethnicity of that parent. Siblings are never each other's spouse.
        """
        rng = self.rng
        couples: dict[int, list[tuple[_Marriage, _Citizen, _Citizen]]] = defaultdict(list)
        for citizen in self.citizens:
            for marriage in citizen.marriages:
                b = marriage.b
                if marriage.a is citizen and b is not None:
                    father, mother = (citizen, b) if citizen.sex == "M" else (b, citizen)
                    couples[marriage.start.year].append((marriage, father, mother))
        for child in self.citizens:
            if child.birth.year < 1960 or rng.random() >= 0.7:
                continue
            spouses = {id(m_.spouse_of(child)) for m_ in child.marriages}
            for _ in range(6):
                candidates = couples.get(child.birth.year - between_ints(rng, 0, 12))
                if not candidates:
                    continue
                marriage, father, mother = candidates[below(rng, len(candidates))]
                if (
                    marriage.start < child.birth
                    and (marriage.divorce is None or child.birth < marriage.divorce)
                    and child.birth < father.end
                    and child.birth < mother.end
                    and _add_years(mother.birth, 18) <= child.birth <= _add_years(mother.birth, 45)
                    and len(marriage.children) < 4
                    and not any(id(sibling) in spouses for sibling in marriage.children)
                ):
                    self._adopt_family_name(child, father, mother)
                    marriage.children.append(child)
                    break

    def _adopt_family_name(self, child: _Citizen, father: _Citizen, mother: _Citizen) -> None:
        child.father_pin, child.mother_pin = father.pin, mother.pin
        lineage = mother if mother.ethnicity == "Ê Đê" else father
        if child.ethnicity != lineage.ethnicity:
            child.ethnicity = lineage.ethnicity
            child.name = random_name(
                self.rng, child.sex, ethnicity=child.ethnicity, birth_year=child.birth.year
            )
        child.name = PersonName(
            surname=lineage.name.surname,
            middle=child.name.middle,
            given=child.name.given,
            clan_last=child.name.clan_last,
        )

    def renames(self) -> None:
        rng = self.rng
        for citizen in self.citizens:
            age1 = _add_years(citizen.birth, 1)
            if age1 >= citizen.end or rng.random() >= _RENAME_SHARE:
                continue
            day = _between(rng, age1, citizen.end - _DAY)
            citizen.renames.append((day, renamed(rng, citizen.name, citizen.sex)))

    # ---- phase 5: civil-status events (they need the final names and parents)

    def civil_status(self, citizen: _Citizen) -> None:
        rng = self.rng
        commune_known = citizen.birth.year >= 1990 or rng.random() < 0.8
        birth = m.BirthRegistered.model_construct(
            full_name=citizen.name.full,
            birth_date=citizen.birth,
            sex=m.Sex(citizen.sex),
            birthplace_province=citizen.birth_place.code,
            birthplace_commune=citizen.birth_place.commune if commune_known else None,
            ethnicity=citizen.ethnicity,
            nationality="VN",
            father_pin=citizen.father_pin,
            mother_pin=citizen.mother_pin,
            registration_number=f"{between_ints(rng, 1, 3000)}/{citizen.birth.year}",
        )
        self.emit(
            citizen,
            m.EventType.BIRTH_REGISTERED,
            citizen.birth_place.code,
            citizen.birth,
            birth,
            office=False,
            correlation_id=citizen.birth_correlation_id,
        )
        for marriage in citizen.marriages:
            spouse = marriage.spouse_of(citizen)
            spouse_name = spouse.name_at(marriage.start).full if spouse else marriage.outsider_name
            wed = m.MarriageRegistered.model_construct(
                spouse_pin=spouse.pin if spouse else None,
                spouse_full_name=spouse_name,
                marriage_date=marriage.start,
                registration_number=marriage.registration_number,
            )
            self.emit(
                citizen,
                m.EventType.MARRIAGE_REGISTERED,
                marriage.province,
                marriage.start,
                wed,
                correlation_id=marriage.correlation_id,
            )
            if marriage.divorce is not None:
                split = m.DivorceRecorded.model_construct(
                    spouse_pin=spouse.pin if spouse else None,
                    divorce_date=marriage.divorce,
                    court_decision_number=marriage.court_decision_number,
                )
                self.emit(
                    citizen,
                    m.EventType.DIVORCE_RECORDED,
                    marriage.divorce_province,
                    marriage.divorce,
                    split,
                    correlation_id=marriage.divorce_correlation_id,
                )
        for day, name in citizen.renames:
            change = m.CivilStatusChanged.model_construct(
                change_kind=m.CivilStatusChangeKind.NAME_CHANGE,
                new_full_name=name.full,
                new_ethnicity=None,
                corrected_birth_date=None,
                corrected_sex=None,
                effective_date=day,
                decision_number=f"{between_ints(rng, 1, 2000)}/QĐ-UBND",
            )
            self.emit(
                citizen, m.EventType.CIVIL_STATUS_CHANGED, citizen.place_at(day).code, day, change
            )
        if citizen.death is not None:
            province = citizen.place_at(citizen.death).code
            death = m.DeathRegistered.model_construct(
                death_date=citizen.death,
                death_place_province=province,
                registration_number=f"{between_ints(rng, 1, 1500)}/{citizen.death.year}",
            )
            self.emit(
                citizen, m.EventType.DEATH_REGISTERED, province, citizen.death, death, office=False
            )
        elif rng.random() < _WRONGLY_DECLARED_DEAD_SHARE:
            self._annulled_death(citizen)

    def _annulled_death(self, citizen: _Citizen) -> None:
        """A death registered in error (e.g. a namesake's) and annulled by a court later."""
        rng = self.rng
        first, last = citizen.birth + 365 * _DAY, citizen.end - 120 * _DAY
        if first >= last:
            return
        declared = _between(rng, first, last)
        province = citizen.place_at(declared).code
        number = f"{between_ints(rng, 1, 1500)}/{declared.year}"
        death = m.DeathRegistered.model_construct(
            death_date=declared, death_place_province=province, registration_number=number
        )
        self.emit(citizen, m.EventType.DEATH_REGISTERED, province, declared, death, office=False)
        decided = declared + between_ints(rng, 30, 110) * _DAY
        annulment = m.DeathAnnulled.model_construct(
            death_registration_number=number,
            court_decision_number=f"{between_ints(rng, 1, 900)}/{decided.year}/QĐ-TA",
            decision_date=decided,
        )
        self.emit(citizen, m.EventType.DEATH_ANNULLED, province, decided, annulment)

    # ---- phase 6: sector records (from a generator of their own: the stories stay the same)

    def sector_records(self, citizen: _Citizen, rng: random.Random) -> None:
        """A social insurance or civil servant record for some adults, registered when they
        started working (from 1995, before 60), with the PIN: sector data as such systems hold
        it (the name of the day, sometimes without diacritics; the birthplace not always)."""
        first = max(_add_years(citizen.birth, 18), _SECTOR_RECORDS_FROM)
        last = min(_add_years(citizen.birth, 60), citizen.end - _DAY)
        draw = rng.random()
        if first > last or draw >= _SOCIAL_INSURANCE_SHARE + _CIVIL_SERVANT_SHARE:
            return
        social = draw < _SOCIAL_INSURANCE_SHARE
        day = _between(rng, first, last)
        name = citizen.name_at(day).full
        if rng.random() < _SECTOR_WITHOUT_MARKS:
            name = _without_marks(name)
        number = (
            f"{citizen.birth_place.code[-2:]}{between_ints(rng, 0, 10**8 - 1):08d}"
            if social
            else f"CC-{between_ints(rng, 1, 999_999):06d}"
        )
        record = m.SectorRecordRegistered.model_construct(
            record_number=number,
            full_name=name,
            birth_date=citizen.birth,
            sex=m.Sex(citizen.sex),
            birthplace_province=citizen.birth_place.code if rng.random() < 0.7 else None,
            hometown_province=None,
            legacy_id=None,
        )
        registry = m.SourceRegistry.SOCIAL_INSURANCE if social else m.SourceRegistry.CIVIL_SERVANT
        self.emit(
            citizen,
            m.EventType.SECTOR_RECORD_REGISTERED,
            citizen.place_at(day).code,
            day,
            record,
            registry=registry,
            rng=rng,
        )


# --------------------------------------------------------------------------------------------
# invalid extras: each breaks one validator rule (the first one check_event evaluates)


class _Invalid:
    """Builds the invalid extras from a separate generator, with fresh event ids."""

    def __init__(self, rng: random.Random, clock: _Clock, citizens: Sequence[_Citizen]) -> None:
        self.rng = rng
        self.clock = clock
        self.citizens = citizens

    def draft(
        self,
        reason: str,
        citizen: _Citizen,
        event_type: m.EventType,
        day: date,
        payload: Payload,
        *,
        pin: str | None = None,
        key: bytes | None = None,
        registry: m.SourceRegistry | None = None,
        occurred_at: datetime | None = None,
        recorded_at: datetime | None = None,
    ) -> _Draft:
        subject = pin or citizen.pin
        occurred = occurred_at or self.clock.occurred(self.rng, day)
        return _Draft(
            recorded_at=recorded_at or self.clock.recorded(self.rng, occurred),
            order=-1,
            registry=registry or _sole_authority(event_type),
            province=citizen.place_at(min(day, citizen.end - _DAY)).code,
            event_type=event_type,
            pin=subject,
            occurred_at=occurred,
            payload=payload,
            event_id=_uuid(self.rng),
            correlation_id=None,
            key=key if key is not None else subject.encode(),
            expected_reason=reason,
            citizen=-1,
        )

    def some_day(self, citizen: _Citizen) -> date:
        return _between(self.rng, citizen.birth, citizen.end - _DAY)

    def birth(
        self, citizen: _Citizen, *, sex: Sex | None = None, nationality: str = "VN"
    ) -> m.BirthRegistered:
        return m.BirthRegistered.model_construct(
            full_name=citizen.name.full,
            birth_date=citizen.birth,
            sex=m.Sex(sex or citizen.sex),
            birthplace_province=citizen.birth_place.code,
            birthplace_commune=citizen.birth_place.commune,
            ethnicity=citizen.ethnicity,
            nationality=nationality,
            father_pin=None,
            mother_pin=None,
            registration_number=f"{between_ints(self.rng, 1, 3000)}/{citizen.birth.year}",
        )

    def place(
        self, citizen: _Citizen, *, province: str | None = None, commune: str | None = None
    ) -> m.Address:
        place = geo.Place.draw(self.rng, citizen.birth_place.unit)
        return m.Address.model_construct(
            province_code=province or place.code,
            legacy_province_code=None,
            commune_code=commune or place.commune,
            address_line=place.line,
        )

    def permanent(
        self, citizen: _Citizen, day: date, **kwargs: str
    ) -> m.PermanentResidenceRegistered:
        return m.PermanentResidenceRegistered.model_construct(
            address=self.place(citizen, **kwargs), effective_date=day
        )

    def temporary(
        self, citizen: _Citizen, day: date, **kwargs: str
    ) -> m.TemporaryResidenceRegistered:
        return m.TemporaryResidenceRegistered.model_construct(
            address=self.place(citizen, **kwargs), effective_date=day, valid_until=None
        )

    def card(self, pin: str, issue: date, expiry: date | None) -> m.IdCardIssued:
        card = m.IdCard.model_construct(
            card_number=pin, issue_date=issue, expiry_date=expiry, issuing_authority=_MINISTRY
        )
        return m.IdCardIssued.model_construct(card=card)

    # ---- one builder per reason

    def pin_century_gender(self, c: _Citizen, variant: int) -> _Draft:
        if variant % 2 == 0:  # the century half of the 4th digit is wrong: 0<->2, 1<->3
            pin = c.pin[:3] + str(int(c.pin[3]) ^ 2) + c.pin[4:]
            payload = self.birth(c)
        else:  # the registered sex contradicts the gender half of the digit
            pin = c.pin
            payload = self.birth(c, sex="F" if c.sex == "M" else "M")
        return self.draft(
            "PIN_CENTURY_GENDER_MISMATCH",
            c,
            m.EventType.BIRTH_REGISTERED,
            c.birth,
            payload,
            pin=pin,
        )

    def address_province(self, c: _Citizen, variant: int) -> _Draft:
        day = self.some_day(c)
        payload = self.permanent(c, day, province=("099", "99")[variant % 2])
        return self.draft(
            "ADDRESS_PROVINCE_UNKNOWN", c, m.EventType.PERMANENT_RESIDENCE_REGISTERED, day, payload
        )

    def occurred_in_future(self, c: _Citizen, variant: int) -> _Draft:
        # A registry whose clock runs days ahead: both instants are stamped in the future.
        issue = max(self.clock.cutoff - timedelta(days=between_ints(self.rng, 0, 30)), c.birth)
        skewed = self.clock.occurred(
            self.rng, self.clock.cutoff + timedelta(days=between_ints(self.rng, 3, 40))
        )
        return self.draft(
            "OCCURRED_IN_FUTURE",
            c,
            m.EventType.ID_CARD_ISSUED,
            issue,
            self.card(c.pin, issue, _card_expiry(c.birth, issue)),
            occurred_at=skewed,
            recorded_at=skewed + timedelta(minutes=between_ints(self.rng, 1, 60)),
        )

    def date_in_future(self, c: _Citizen, variant: int) -> _Draft:
        # A move announced ahead: the legal date is weeks away, the message is sent today.
        effective = self.clock.cutoff + timedelta(days=between_ints(self.rng, 3, 90))
        sent = max(self.clock.cutoff - timedelta(days=between_ints(self.rng, 0, 30)), c.birth)
        return self.draft(
            "DATE_IN_FUTURE",
            c,
            m.EventType.TEMPORARY_RESIDENCE_REGISTERED,
            sent,
            self.temporary(c, effective),
        )

    def death_before_birth(self, c: _Citizen, variant: int) -> _Draft:
        # A mistyped year: the death date lies before the birth year the PIN encodes.
        years_back = between_ints(self.rng, 1, min(30, c.birth.year - 1900))
        died = _add_years(c.birth, -years_back)
        payload = m.DeathRegistered.model_construct(
            death_date=died,
            death_place_province=c.place_at(c.end - _DAY).code,
            registration_number=f"{between_ints(self.rng, 1, 1500)}/{died.year}",
        )
        when = self.clock.occurred(self.rng, self.some_day(c))
        return self.draft(
            "DEATH_BEFORE_BIRTH",
            c,
            m.EventType.DEATH_REGISTERED,
            when.date(),
            payload,
            occurred_at=when,
        )

    def not_authoritative(self, c: _Citizen, variant: int) -> _Draft:
        day = self.some_day(c)
        return self.draft(
            "SOURCE_NOT_AUTHORITATIVE",
            c,
            m.EventType.PERMANENT_RESIDENCE_REGISTERED,
            day,
            self.permanent(c, day),
            registry=m.SourceRegistry.CIVIL_STATUS,
        )

    def key_mismatch(self, c: _Citizen, variant: int) -> _Draft:
        other = self.citizens[below(self.rng, len(self.citizens))]
        key = other.pin if other is not c else c.pin[:-1] + str((int(c.pin[-1]) + 1) % 10)
        day = self.some_day(c)
        return self.draft(
            "KEY_PIN_MISMATCH",
            c,
            m.EventType.TEMPORARY_RESIDENCE_REGISTERED,
            day,
            self.temporary(c, day),
            key=key.encode(),
        )

    def name_control(self, c: _Citizen, variant: int) -> _Draft:
        day = self.some_day(c)
        surname, _, rest = renamed(self.rng, c.name, c.sex).full.partition(" ")
        junk = ("\u200b", "\x00", "\u202e", "\t", "\n")[variant % 5]
        payload = m.CivilStatusChanged.model_construct(
            change_kind=m.CivilStatusChangeKind.NAME_CHANGE,
            new_full_name=f"{surname}{junk} {rest}",
            new_ethnicity=None,
            corrected_birth_date=None,
            corrected_sex=None,
            effective_date=day,
            decision_number=f"{between_ints(self.rng, 1, 2000)}/QĐ-UBND",
        )
        return self.draft("NAME_CONTROL_CHARS", c, m.EventType.CIVIL_STATUS_CHANGED, day, payload)

    def commune_malformed(self, c: _Citizen, variant: int) -> _Draft:
        day = self.some_day(c)
        good = geo.commune_code(self.rng, c.birth_place.unit)
        bad = (good[:-1], good + "0", good[:2] + "A" + good[3:], good[:2] + "-" + good[2:])
        return self.draft(
            "COMMUNE_CODE_MALFORMED",
            c,
            m.EventType.TEMPORARY_RESIDENCE_REGISTERED,
            day,
            self.temporary(c, day, commune=bad[variant % 4]),
        )

    def recorded_before_occurred(self, c: _Citizen, variant: int) -> _Draft:
        day = self.some_day(c)
        occurred = self.clock.occurred(self.rng, day)
        return self.draft(
            "RECORDED_BEFORE_OCCURRED",
            c,
            m.EventType.PERMANENT_RESIDENCE_REGISTERED,
            day,
            self.permanent(c, day),
            occurred_at=occurred,
            recorded_at=occurred - timedelta(seconds=between_ints(self.rng, 60, 86400)),
        )

    def expiry_before_issue(self, c: _Citizen, variant: int) -> _Draft:
        issue = self.some_day(c)
        expiry = issue - timedelta(days=between_ints(self.rng, 0, 3650))
        return self.draft(
            "EXPIRY_BEFORE_ISSUE",
            c,
            m.EventType.ID_CARD_ISSUED,
            issue,
            self.card(c.pin, issue, expiry),
        )

    def spouse_is_subject(self, c: _Citizen, variant: int) -> _Draft:
        day = self.some_day(c)
        payload = m.MarriageRegistered.model_construct(
            spouse_pin=c.pin,
            spouse_full_name=random_full_name(self.rng, "F" if c.sex == "M" else "M"),
            marriage_date=day,
            registration_number=f"{between_ints(self.rng, 1, 400)}/{day.year}",
        )
        return self.draft("SPOUSE_PIN_IS_SUBJECT", c, m.EventType.MARRIAGE_REGISTERED, day, payload)

    def nationality(self, c: _Citizen, variant: int) -> _Draft:
        payload = self.birth(c, nationality=("VNM", "Việt Nam", "V")[variant % 3])
        return self.draft(
            "NATIONALITY_MALFORMED", c, m.EventType.BIRTH_REGISTERED, c.birth, payload
        )

    def unknown_pin_province(self, c: _Citizen, variant: int) -> _Draft:
        pin = "099" + c.pin[3:]
        issue = self.some_day(c)
        return self.draft(
            "PIN_UNKNOWN_PROVINCE",
            c,
            m.EventType.ID_CARD_ISSUED,
            issue,
            self.card(pin, issue, None),
            pin=pin,
        )


_Builder = Callable[[_Invalid, _Citizen, int], _Draft]
# Cycled in this order, so any run with at least this many invalid events covers them all.
_INVALID_BUILDERS: tuple[tuple[str, _Builder], ...] = (
    ("PIN_CENTURY_GENDER_MISMATCH", _Invalid.pin_century_gender),
    ("ADDRESS_PROVINCE_UNKNOWN", _Invalid.address_province),
    ("OCCURRED_IN_FUTURE", _Invalid.occurred_in_future),
    ("DEATH_BEFORE_BIRTH", _Invalid.death_before_birth),
    ("SOURCE_NOT_AUTHORITATIVE", _Invalid.not_authoritative),
    ("KEY_PIN_MISMATCH", _Invalid.key_mismatch),
    ("NAME_CONTROL_CHARS", _Invalid.name_control),
    ("COMMUNE_CODE_MALFORMED", _Invalid.commune_malformed),
    ("DATE_IN_FUTURE", _Invalid.date_in_future),
    ("RECORDED_BEFORE_OCCURRED", _Invalid.recorded_before_occurred),
    ("EXPIRY_BEFORE_ISSUE", _Invalid.expiry_before_issue),
    ("SPOUSE_PIN_IS_SUBJECT", _Invalid.spouse_is_subject),
    ("NATIONALITY_MALFORMED", _Invalid.nationality),
    ("PIN_UNKNOWN_PROVINCE", _Invalid.unknown_pin_province),
)
INVALID_REASONS: tuple[str, ...] = tuple(reason for reason, _ in _INVALID_BUILDERS)


# --------------------------------------------------------------------------------------------
# the public API


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the stream is built.

    Generation allocates ~10 GC-tracked objects per event and frees almost none of them, so
    every automatic collection rescans a heap that only grows: about a third of the run time
    for 10,000 citizens. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_arguments(
    citizens: int,
    now: datetime,
    invalid_ratio: float,
    duplicate_ratio: float,
    reorder_ratio: float,
) -> None:
    if citizens < 0:
        raise ValueError(f"citizens must be >= 0, got {citizens}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (event times are UTC instants)")
    if not date(FIRST_BIRTH_YEAR + 1, 1, 1) <= now.astimezone(UTC).date() <= date(2199, 12, 31):
        raise ValueError("now must lie between 1936 and 2199 (births from 1935, PIN centuries)")
    if not 0.0 <= invalid_ratio < 1.0:
        raise ValueError(f"invalid_ratio must be in [0, 1), got {invalid_ratio}")
    for name, ratio in (("duplicate_ratio", duplicate_ratio), ("reorder_ratio", reorder_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def simulate(
    citizens: int,
    seed: int,
    *,
    now: datetime,
    invalid_ratio: float = 0.01,
    duplicate_ratio: float = 0.02,
    reorder_ratio: float = 0.05,
) -> list[SimulatedMessage]:
    """The message stream of ``citizens`` simulated lives, as registries would publish it.

    Ordered by recorded_at, then: ``reorder_ratio`` of each citizen's events swapped with the
    citizen's next one, ``duplicate_ratio`` of the valid events re-sent a little later
    (same event id and content), and extra invalid events making up ``invalid_ratio`` of all
    messages. Every event is dated on or before the day before ``now``, except where the
    invalid event's reason is a future time.
    """
    _check_arguments(citizens, now, invalid_ratio, duplicate_ratio, reorder_ratio)
    with _cyclic_gc_paused():
        return _build(citizens, seed, now, invalid_ratio, duplicate_ratio, reorder_ratio)


def _build(
    citizens: int,
    seed: int,
    now: datetime,
    invalid_ratio: float,
    duplicate_ratio: float,
    reorder_ratio: float,
) -> list[SimulatedMessage]:
    utc_now = now.astimezone(UTC)
    clock = _Clock(
        now=utc_now.replace(microsecond=utc_now.microsecond // 1000 * 1000),
        cutoff=utc_now.date() - _DAY,
    )
    master = random.Random(seed)
    story_rng, invalid_rng, stream_rng = (random.Random(master.getrandbits(64)) for _ in range(3))
    sector_rng = random.Random(master.getrandbits(64))  # drawn last: the others stay the same

    world = _World(story_rng, clock)
    world.populate(citizens)
    for citizen in world.citizens:
        world.residences(citizen)
        world.id_cards(citizen)
    world.marriages()
    world.parents()
    world.renames()
    for citizen in world.citizens:
        world.civil_status(citizen)
    for citizen in world.citizens:
        world.sector_records(citizen, sector_rng)
    drafts = world.drafts

    valid_count = len(drafts)
    duplicate_count = round(duplicate_ratio * valid_count)
    invalid_count = 0
    if world.citizens:
        invalid_count = round(invalid_ratio * (valid_count + duplicate_count) / (1 - invalid_ratio))
    builder = _Invalid(invalid_rng, clock, world.citizens)
    for number in range(invalid_count):
        _, build = _INVALID_BUILDERS[number % len(_INVALID_BUILDERS)]
        citizen = world.citizens[below(invalid_rng, len(world.citizens))]
        invalid = build(builder, citizen, number // len(_INVALID_BUILDERS))
        invalid.order = valid_count + number
        drafts.append(invalid)

    messages = _shape_stream(stream_rng, drafts, duplicate_count, reorder_ratio)
    # Break the citizen <-> marriage cycles so reference counting frees the population now
    # rather than leaving it to a cyclic collection.
    for citizen in world.citizens:
        citizen.marriages.clear()
    return messages


def _shape_stream(
    rng: random.Random, drafts: list[_Draft], duplicate_count: int, reorder_ratio: float
) -> list[SimulatedMessage]:
    """Order by recorded_at, number per registry, swap some neighbours, re-send some."""
    drafts.sort(key=lambda d: (d.recorded_at, d.order))
    sequences: dict[tuple[m.SourceRegistry, str], int] = {}
    stream: list[SimulatedMessage] = []
    for draft in drafts:
        source = (draft.registry, draft.province)
        sequence = sequences[source] = sequences.get(source, 0) + 1
        event = m.RegistryEvent.model_construct(
            event_id=draft.event_id,
            event_type=draft.event_type,
            source_registry=draft.registry,
            source_province=draft.province,
            subject_pin=draft.pin,
            occurred_at=draft.occurred_at,
            recorded_at=draft.recorded_at,
            source_sequence=sequence,
            schema_version=1,
            correlation_id=draft.correlation_id,
            payload=draft.payload,
        )
        stream.append(SimulatedMessage(draft.key, event, draft.expected_reason))

    # Out-of-order arrival: an event overtakes, or is overtaken by, the citizen's next one.
    positions: dict[int, list[int]] = defaultdict(list)
    for position, draft in enumerate(drafts):
        if draft.citizen >= 0:
            positions[draft.citizen].append(position)
    for own in positions.values():
        i = 0
        while i < len(own) - 1:
            if rng.random() < reorder_ratio:
                first, second = own[i], own[i + 1]
                stream[first], stream[second] = stream[second], stream[first]
                i += 2
            else:
                i += 1

    # Re-sends: the same message again, a few hundred messages later at most.
    valid_positions = [p for p, message in enumerate(stream) if message.expected_reason is None]
    resent: dict[int, list[SimulatedMessage]] = defaultdict(list)
    for position in rng.sample(valid_positions, duplicate_count):
        later = min(position + between_ints(rng, 1, 300), len(stream) - 1)
        resent[later].append(stream[position])
    if not resent:
        return stream
    result: list[SimulatedMessage] = []
    for position, message in enumerate(stream):
        result.append(message)
        result.extend(resent.get(position, ()))
    return result


def write_jsonl(messages: Iterable[SimulatedMessage], path: Path) -> int:
    """Write one `event_to_json` object per line (UTF-8, diacritics kept); returns the count.

    Only events are written: a message key that differs from the subject PIN (the
    KEY_PIN_MISMATCH extras) cannot be represented in this format.
    """
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for message in messages:
            handle.write(json.dumps(event_to_json(message.event), ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


def write_avro_container(messages: Iterable[SimulatedMessage], path: Path) -> int:
    """Write the events as an Avro object container file (fastavro's standard format: the
    contract's RegistryEvent schema in the header, deflate blocks): a registry's archive,
    as a province joining popsync would hand it over. Returns the count.

    Like `write_jsonl`, only the events: a message key that differs from the subject PIN
    cannot be represented.
    """
    count = 0

    def records() -> Iterator[dict[str, object]]:
        nonlocal count
        for message in messages:
            count += 1
            yield to_avro_datum(message.event)

    schema = contract_schema("RegistryEvent").parsed
    with path.open("wb") as handle:
        fastavro.writer(handle, schema, records(), codec="deflate")
    return count


def stats(messages: Iterable[SimulatedMessage]) -> StreamStats:
    """Summarize a stream: totals, expected verdicts, re-sends, citizens, types, provinces."""
    total = valid = duplicates = 0
    seen: set[str] = set()
    pins: set[str] = set()
    by_type: Counter[str] = Counter()
    by_province: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    for message in messages:
        event = message.event
        total += 1
        if event.event_id in seen:
            duplicates += 1
        seen.add(event.event_id)
        if message.expected_reason is None:
            valid += 1
            if event.subject_pin is not None:
                pins.add(event.subject_pin)
        else:
            by_reason[message.expected_reason] += 1
        by_type[event.event_type.value] += 1
        by_province[event.source_province] += 1
    return StreamStats(
        total=total,
        expected_valid=valid,
        expected_invalid=total - valid,
        duplicates=duplicates,
        distinct_citizens=len(pins),
        by_event_type=dict(sorted(by_type.items())),
        by_source_province=dict(sorted(by_province.items())),
        by_expected_reason=dict(sorted(by_reason.items())),
    )
