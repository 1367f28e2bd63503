"""A labelled, seeded benchmark for record matching: a citizen population and sector records.

Population. Names come from the simulator's frequency tables (``popsync.dev.simulate.names``:
~38% Nguyễn, Văn/Thị by birth year, ethnic minorities' names by province), birthplaces from
the 63 pre-merger provinces weighted by population (``popsync.dev.simulate.geography``), birth
years 1955-2006 (the working population that has civil-service and social-insurance
records). On top of the namesakes that such frequencies produce by themselves:

* twins (``TWIN_PAIR_RATE`` of draws yield a pair): same birth date, birthplace, hometown and
  surname, sexes drawn independently, different given names (the middle name is shared half
  of the time) -- given names are drawn from the same pool, so Hùng/Hưng pairs occur;
* namesakes (``NAMESAKE_PAIR_RATE``): the same full name and sex in the same birthplace
  province, a different birth date;
* renamed people (``RENAMED_SHARE``): a former name from before a legal name change;
* a 9-digit CMND alias for ``CMND_SHARE`` of people born before 2000.

Records. A share ``non_match_share`` (default 10%) describes people absent from the
population: fresh people (60%), a namesake of a citizen (20%: same name, sex and birthplace,
other birth date), or the unregistered twin of a citizen (20%: same surname, birth date,
birthplace and hometown, another given name). The rest describe a citizen drawn uniformly.
Every record then gets independent noise, each with its tag (``NOISE``): a typo in one name
token, a missing middle name, a former name, diacritics stripped or only đ -> d, upper case,
NFD encoding, day and month swapped, one date field off, legacy or 3-digit province codes, a
missing or wrong birthplace, a missing hometown, a wrong sex, a legacy ID (sometimes with a
wrong digit).
"""

from __future__ import annotations

import datetime
import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace

from popsync.dev.simulate import geography as geo
from popsync.dev.simulate.names import PersonName, random_name, renamed
from popsync.domain.pin import Sex, make_pin
from popsync.identity import CandidateCitizen, SectorRecord, SectorSource

__all__ = [
    "NOISE",
    "Benchmark",
    "LabelledRecord",
    "Person",
    "generate",
]

FIRST_BIRTH_YEAR = 1955
LAST_BIRTH_YEAR = 2006
TWIN_PAIR_RATE = 0.015  # -> ~3% of citizens are twins (real rate ~2%: a harder population)
NAMESAKE_PAIR_RATE = 0.02
RENAMED_SHARE = 0.02
CMND_SHARE = 0.8
HOMETOWN_KNOWN_SHARE = 0.9
HOMETOWN_IS_BIRTHPLACE = 0.7

# Noise on records: tag -> probability (applied independently).
NOISE: dict[str, float] = {
    "typo": 0.10,
    "missing_middle": 0.04,
    "former_name": 0.5,  # of records about a renamed person
    "no_diacritics": 0.25,
    "d_folded": 0.05,  # only đ -> d, other marks kept
    "upper": 0.15,
    "nfd": 0.20,
    "swapped_day_month": 0.03,  # applied only where the swap gives another valid date
    "date_one_field_off": 0.02,
    "legacy_province": 0.5,  # of codes in a merged-away unit
    "three_digit_code": 0.10,
    "missing_birthplace": 0.05,
    "wrong_birthplace": 0.02,
    "missing_hometown": 0.30,
    "wrong_sex": 0.005,
    "legacy_id": 0.40,  # of records about someone with a CMND
    "legacy_id_typo": 0.01,  # of records carrying a legacy ID
}

_NON_MATCH_KINDS = (("absent", 0.6), ("absent_namesake", 0.2), ("absent_twin", 0.2))
_TYPO_LETTERS = "abcdeghiklmnopqrstuvxy"
_D_STROKE = str.maketrans({"đ": "d", "Đ": "D"})


@dataclass(frozen=True, slots=True)
class Person:
    """A simulated person (a citizen, or someone absent from the population)."""

    name: PersonName
    former: PersonName | None
    sex: Sex
    birth_date: datetime.date
    unit: str  # pre-merger province of birth
    hometown_unit: str | None
    cmnd: str | None
    pin: str
    ethnicity: str = "Kinh"
    tags: tuple[str, ...] = ()  # "twin", "namesake", "renamed"

    def citizen(self) -> CandidateCitizen:
        return CandidateCitizen(
            pin=self.pin,
            full_name=self.name.full,
            birth_date=self.birth_date,
            sex=self.sex,
            birthplace_province=geo.current_of(self.unit),
            hometown_province=(
                None if self.hometown_unit is None else geo.current_of(self.hometown_unit)
            ),
            aliases=() if self.cmnd is None else (self.cmnd,),
            former_names=() if self.former is None else (self.former.full,),
        )


@dataclass(frozen=True, slots=True)
class LabelledRecord:
    record: SectorRecord
    true_pin: str | None  # None: the person is not in the population
    kind: str  # "match", "absent", "absent_namesake", "absent_twin"
    person_tags: tuple[str, ...]
    noise: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Benchmark:
    seed: int
    people: tuple[Person, ...]
    records: tuple[LabelledRecord, ...]

    def citizens(self) -> Iterator[CandidateCitizen]:
        return (p.citizen() for p in self.people)


class _Ids:
    """Unique PINs and CMNDs."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pins: set[str] = set()
        self._cmnds: set[str] = set()

    def pin(self, unit: str, sex: Sex, year: int) -> str:
        while True:
            value = make_pin(f"0{unit}", sex, year, int(self._rng.random() * 1_000_000)).value
            if value not in self._pins:
                self._pins.add(value)
                return value

    def cmnd(self) -> str:
        while True:
            value = f"{int(self._rng.random() * 1_000_000_000):09d}"
            if value not in self._cmnds:
                self._cmnds.add(value)
                return value


def _birth_date(rng: random.Random) -> datetime.date:
    year = FIRST_BIRTH_YEAR + int(rng.random() * (LAST_BIRTH_YEAR - FIRST_BIRTH_YEAR + 1))
    first = datetime.date(year, 1, 1)
    days = (datetime.date(year + 1, 1, 1) - first).days
    return first + datetime.timedelta(days=int(rng.random() * days))


def _sex(rng: random.Random) -> Sex:
    return "M" if rng.random() < 0.5 else "F"


def _hometown(rng: random.Random, unit: str) -> str | None:
    if rng.random() >= HOMETOWN_KNOWN_SHARE:
        return None
    return unit if rng.random() < HOMETOWN_IS_BIRTHPLACE else geo.pick_unit(rng)


def _cmnd(rng: random.Random, ids: _Ids, birth: datetime.date) -> str | None:
    return ids.cmnd() if birth.year < 2000 and rng.random() < CMND_SHARE else None


def _person(
    rng: random.Random,
    ids: _Ids,
    *,
    name: PersonName | None = None,
    sex: Sex | None = None,
    birth: datetime.date | None = None,
    unit: str | None = None,
    hometown_unit: str | None = None,
    ethnicity: str | None = None,
    tags: tuple[str, ...] = (),
) -> Person:
    sex = sex if sex is not None else _sex(rng)
    birth = birth if birth is not None else _birth_date(rng)
    unit = unit if unit is not None else geo.pick_unit(rng)
    if ethnicity is None:
        ethnicity = geo.pick_ethnicity(rng, geo.current_of(unit))
    if name is None:
        name = random_name(rng, sex, ethnicity=ethnicity, birth_year=birth.year)
    former = None
    if rng.random() < RENAMED_SHARE:
        former, name = name, renamed(rng, name, sex)
        tags = (*tags, "renamed")
    return Person(
        name=name,
        former=former,
        sex=sex,
        birth_date=birth,
        unit=unit,
        hometown_unit=hometown_unit if hometown_unit is not None else _hometown(rng, unit),
        cmnd=_cmnd(rng, ids, birth),
        pin=ids.pin(unit, sex, birth.year),
        ethnicity=ethnicity,
        tags=tags,
    )


def _other_date(rng: random.Random, birth: datetime.date) -> datetime.date:
    while True:
        other = _birth_date(rng)
        if other != birth:
            return other


def _twin_of(rng: random.Random, ids: _Ids, sibling: Person) -> Person:
    sex = _sex(rng)
    ethnicity = sibling.ethnicity
    own = random_name(rng, sex, ethnicity=ethnicity, birth_year=sibling.birth_date.year)
    middle = sibling.name.middle if rng.random() < 0.5 and sex == sibling.sex else own.middle
    name = replace(own, surname=sibling.name.surname, middle=middle)
    while name.given == sibling.name.given:
        name = replace(name, given=random_name(rng, sex, ethnicity=ethnicity).given)
    return _person(rng, ids, name=name, sex=sex, birth=sibling.birth_date, unit=sibling.unit,
                   hometown_unit=sibling.hometown_unit, ethnicity=ethnicity,
                   tags=("twin",))  # fmt: skip


def _namesake_of(rng: random.Random, ids: _Ids, other: Person) -> Person:
    return _person(rng, ids, name=other.name, sex=other.sex,
                   birth=_other_date(rng, other.birth_date), unit=other.unit,
                   ethnicity=other.ethnicity, tags=("namesake",))  # fmt: skip


def _population(rng: random.Random, ids: _Ids, size: int) -> list[Person]:
    people: list[Person] = []
    while len(people) < size:
        draw = rng.random()
        room = size - len(people) >= 2
        if room and draw < TWIN_PAIR_RATE:
            first = _person(rng, ids, tags=("twin",))
            people += [first, _twin_of(rng, ids, first)]
        elif room and draw < TWIN_PAIR_RATE + NAMESAKE_PAIR_RATE:
            first = _person(rng, ids, tags=("namesake",))
            people += [first, _namesake_of(rng, ids, first)]
        else:
            people.append(_person(rng, ids))
    return people


# ------------------------------------------------------------------------------ noise


def _typo(rng: random.Random, token: str) -> str:
    letters = list(token)
    if len(letters) < 2:
        return token
    i = int(rng.random() * len(letters))
    op = int(rng.random() * 4)
    letter = _TYPO_LETTERS[int(rng.random() * len(_TYPO_LETTERS))]
    if op == 0:
        letters[i] = letter
    elif op == 1 and len(letters) >= 3:
        del letters[i]
    elif op == 2:
        letters.insert(i, letter)
    else:
        j = min(i + 1, len(letters) - 1)
        if j == i:
            i -= 1
        letters[i], letters[j] = letters[j], letters[i]
    return "".join(letters)


def _strip_diacritics(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.translate(_D_STROKE))
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def _observed_name(rng: random.Random, person: Person, noise: list[str]) -> str:
    name = person.name
    if person.former is not None and rng.random() < NOISE["former_name"]:
        name = person.former
        noise.append("former_name")
    tokens = name.full.split()
    if len(tokens) >= 3 and rng.random() < NOISE["missing_middle"]:
        del tokens[1 + int(rng.random() * (len(tokens) - 2))]
        noise.append("missing_middle")
    if rng.random() < NOISE["typo"]:
        # Half of the typos hit the given name (the last token), the rest any token.
        k = len(tokens) - 1 if rng.random() < 0.5 else int(rng.random() * len(tokens))
        typo = _typo(rng, tokens[k])
        if typo != tokens[k]:
            tokens[k] = typo
            noise.append("typo")
    text = " ".join(tokens)
    if rng.random() < NOISE["no_diacritics"]:
        stripped = _strip_diacritics(text)
        if stripped != text:
            text = stripped
            noise.append("no_diacritics")
    elif rng.random() < NOISE["d_folded"] and ("đ" in text or "Đ" in text):
        text = text.translate(_D_STROKE)
        noise.append("d_folded")
    if rng.random() < NOISE["upper"]:
        text = text.upper()
        noise.append("upper")
    if rng.random() < NOISE["nfd"]:
        text = unicodedata.normalize("NFD", text)
        noise.append("nfd")
    return text


def _observed_date(rng: random.Random, birth: datetime.date, noise: list[str]) -> datetime.date:
    if rng.random() < NOISE["swapped_day_month"] and birth.day <= 12 and birth.day != birth.month:
        noise.append("swapped_day_month")
        return birth.replace(month=birth.day, day=birth.month)
    if rng.random() < NOISE["date_one_field_off"]:
        noise.append("date_one_field_off")
        while True:  # exactly one of day, month, year changes; the date stays valid
            field = int(rng.random() * 3)
            try:
                if field == 0:
                    other = birth.replace(day=1 + int(rng.random() * 28))
                elif field == 1:
                    other = birth.replace(month=1 + int(rng.random() * 12))
                else:
                    other = birth.replace(year=birth.year + (1 if rng.random() < 0.5 else -1))
            except ValueError:  # 31 April, 29 February of a common year
                continue
            if other != birth:
                return other
    return birth


def _code_as_sent(rng: random.Random, unit: str, noise: list[str]) -> str:
    code = geo.current_of(unit)
    if unit in geo.MERGED_AWAY and rng.random() < NOISE["legacy_province"]:
        code = unit
        if "legacy_province" not in noise:
            noise.append("legacy_province")
    if rng.random() < NOISE["three_digit_code"]:
        code = f"0{code}"
        if "three_digit_code" not in noise:
            noise.append("three_digit_code")
    return code


def _observe(
    rng: random.Random, person: Person, record_id: str, source: SectorSource
) -> tuple[SectorRecord, tuple[str, ...]]:
    noise: list[str] = []
    name = _observed_name(rng, person, noise)
    birth = _observed_date(rng, person.birth_date, noise)
    sex = person.sex
    if rng.random() < NOISE["wrong_sex"]:
        sex = "F" if sex == "M" else "M"
        noise.append("wrong_sex")
    birthplace: str | None
    if rng.random() < NOISE["missing_birthplace"]:
        birthplace = None
        noise.append("missing_birthplace")
    elif rng.random() < NOISE["wrong_birthplace"]:
        wrong = person.hometown_unit
        while wrong is None or geo.current_of(wrong) == geo.current_of(person.unit):
            wrong = geo.pick_unit(rng)
        birthplace = _code_as_sent(rng, wrong, noise)
        noise.append("wrong_birthplace")
    else:
        birthplace = _code_as_sent(rng, person.unit, noise)
    hometown: str | None = None
    if person.hometown_unit is not None:
        if rng.random() < NOISE["missing_hometown"]:
            noise.append("missing_hometown")
        else:
            hometown = _code_as_sent(rng, person.hometown_unit, noise)
    legacy_id: str | None = None
    if person.cmnd is not None and rng.random() < NOISE["legacy_id"]:
        legacy_id = person.cmnd
        noise.append("legacy_id")
        if rng.random() < NOISE["legacy_id_typo"]:
            k = int(rng.random() * 9)
            digit = str((int(legacy_id[k]) + 1 + int(rng.random() * 9)) % 10)
            legacy_id = legacy_id[:k] + digit + legacy_id[k + 1 :]
            noise.append("legacy_id_typo")
    record = SectorRecord(
        record_id=record_id,
        source=source,
        full_name=name,
        birth_date=birth,
        sex=sex,
        birthplace_province=birthplace,
        hometown_province=hometown,
        legacy_id=legacy_id,
    )
    return record, tuple(noise)


def _non_match_kind(rng: random.Random) -> str:
    draw = rng.random()
    for kind, share in _NON_MATCH_KINDS:
        if draw < share:
            return kind
        draw -= share
    return _NON_MATCH_KINDS[-1][0]


def generate(seed: int, citizens: int, records: int, *, non_match_share: float = 0.10) -> Benchmark:
    """The population and ``records`` labelled sector records, fully determined by ``seed``."""
    if citizens < 2 or records < 1:
        raise ValueError("need at least 2 citizens and 1 record")
    rng = random.Random(seed)
    ids = _Ids(rng)
    people = _population(rng, ids, citizens)
    labelled: list[LabelledRecord] = []
    for k in range(records):
        source = SectorSource.CIVIL_SERVANT if rng.random() < 0.3 else SectorSource.SOCIAL_INSURANCE
        if rng.random() < non_match_share:
            kind = _non_match_kind(rng)
            other = people[int(rng.random() * len(people))]
            if kind == "absent_namesake":
                person = _namesake_of(rng, ids, other)
            elif kind == "absent_twin":
                person = _twin_of(rng, ids, other)
            else:
                person = _person(rng, ids)
            true_pin = None
        else:
            kind = "match"
            person = people[int(rng.random() * len(people))]
            true_pin = person.pin
        record, noise = _observe(rng, person, f"R{k:07d}", source)
        labelled.append(LabelledRecord(record, true_pin, kind, person.tags, noise))
    return Benchmark(seed=seed, people=tuple(people), records=tuple(labelled))
