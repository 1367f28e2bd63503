"""Matching sector records that carry no PIN (civil servant, social insurance) to citizens.

Pure domain code: no Kafka, no SQL. The caller builds a ``CitizenIndex`` from the citizens it
holds, calls ``match(record, index, thresholds)`` per record and routes the ``MatchDecision``:
LINKED -> link automatically, REVIEW -> the review topic (with the top candidates),
UNMATCHED -> report. ``match`` is ``decide(evaluate(record, index), thresholds)``; a caller
that wants to re-decide with other thresholds keeps the ``Evaluation``.

Passes, in order
----------------
1. **Alias** (deterministic): the record's legacy ID (9-digit CMND, an old PIN) equals an
   alias of exactly one citizen -> LINKED, unless that citizen's demographic score is below
   the review threshold (a mistyped ID that hits someone else): REVIEW. An ID held by
   several citizens -> REVIEW.
2. **Exact** (deterministic): folded name + birth date + sex + birthplace province (current
   code) equal -> LINKED if exactly one citizen has them and no other candidate scores within
   ``margin`` of it; several (namesake twins, folded-equal names such as Hùng/Hưng) -> REVIEW.
3. **Probabilistic** (Fellegi-Sunter): every blocked candidate gets a score, the sum of the
   log2 likelihood ratios (bits) of its field comparisons; ``log2(m/u)`` where ``m`` is the
   probability of the comparison outcome for the same person and ``u`` for two different
   people. The best candidate is LINKED if its score reaches ``auto_link`` and beats the
   runner-up by ``margin`` (twins and namesakes share most fields, so a lone high score is
   not enough); REVIEW if it reaches ``review``; otherwise UNMATCHED.

Field comparisons (``FieldWeights`` holds the bits)
---------------------------------------------------
* name: tokens folded (``popsync.identity.folding``) and aligned one to one, equal tokens
  first, then pairs within one edit (two for tokens of 7+ letters; rapidfuzz OSA distance,
  which counts a swap of adjacent letters as one edit). The weight of a token is its IDF in
  bits (``TokenWeights``: Nguyễn, Thị, Văn 1.5-2; a rarer given name 5-8). Per pair:

  - equal: + weight; but if both sides carry diacritics and they differ (Hùng vs Hưng;
    ``đ`` vs ``d`` is no difference): a NEAR MISS, - ``near_miss_penalty``;
  - one or two edits apart: a typo, + ``typo_factor * similarity * weight`` -- unless the
    record's token is itself a known name (in the weight table): Dũng is another name, not
    a typo of Hùng, so that is a NEAR MISS too;
  - a token left unpaired (a middle name missing, a given name replaced):
    - ``unpaired_base + unpaired_factor * weight``.

  A name with a near miss or a substitution (tokens unpaired on both sides) loses
  ``conflict_penalty`` more. That is the correction Fellegi-Sunter's independence assumption
  needs: twins and siblings agree on surname, birth date, birthplace and hometown, so once
  those agree a different given name is far stronger evidence of another person than its
  own m/u says. The name adds at most ``name_agree_cap`` bits (names cluster by province and
  ethnic group, so a nationally rare name is not that rare among the candidates). A
  citizen's former names are compared too; the best one counts.
* birth date: exact; day and month transposed; exactly one of day, month, year off (0 bits:
  namesakes and relatives are often born in the same year or month); different.
* sex; birthplace province (legacy codes mapped to the current 34); hometown province.
  A field missing on either side contributes 0.

Blocking (``CitizenIndex``)
---------------------------
A record is compared only with the citizens that share at least one key. Each key tolerates a
different kind of error, so that one error of any kind keeps the true citizen in the set,
while every key is narrow (a full birth date, or two of its three fields, combined with name
tokens) so sets stay small even for a national population:

* ``G``: birth date + the last name token (usually the given name), with every one-letter
  deletion of that token (SymSpell-style: one edit of any kind on either side still shares a
  key). Tolerates a typo in the given name, any error in the other tokens, sex and places.
* ``S``: birth date + first token (usually the surname) + sex. Tolerates a given name
  replaced or mangled.
* ``M``, ``YM``, ``YD``: two of day, month and year + first and last tokens. Tolerate one
  wrong date field (not only a transposition), with no birthplace needed.

A record looks up ``G`` and ``S`` with its birth date and, if day and month can be swapped,
the transposed date. Missed by design: an error in the date together with one in the first
or last name token. The benchmark (``bench/matching``) measures how many true matches
blocking keeps and the mean candidate set.

No personal data in text: ``repr`` of every class here shows PINs masked and no names, dates
or record ids; ``MatchDecision.audit()`` has scores, levels and codes only.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rapidfuzz.distance import OSA

from popsync.domain.pin import Sex, mask_pin
from popsync.domain.provinces import UnknownProvinceCode, resolve_province
from popsync.identity.folding import TokenWeights, default_token_weights, name_tokens

__all__ = [
    "DEFAULT_FIELD_WEIGHTS",
    "REASONS",
    "CandidateCitizen",
    "CitizenIndex",
    "Evaluation",
    "FieldScore",
    "FieldWeights",
    "MatchDecision",
    "MatchMethod",
    "MatchOutcome",
    "MatchThresholds",
    "ScoredCandidate",
    "SectorRecord",
    "SectorSource",
    "decide",
    "evaluate",
    "match",
    "score_pair",
]


class SectorSource(StrEnum):
    """The sector system a record comes from."""

    CIVIL_SERVANT = "CIVIL_SERVANT"
    SOCIAL_INSURANCE = "SOCIAL_INSURANCE"


class MatchOutcome(StrEnum):
    LINKED = "LINKED"  # linked automatically
    REVIEW = "REVIEW"  # for a person to decide, with the top candidates
    UNMATCHED = "UNMATCHED"  # no citizen is a plausible match; reported


class MatchMethod(StrEnum):
    ALIAS = "ALIAS"
    EXACT = "EXACT"
    PROBABILISTIC = "PROBABILISTIC"
    NONE = "NONE"  # no candidate at all


# Stable reason codes of a decision (one line each, no personal data).
REASONS: dict[str, str] = {
    "ALIAS": "the legacy ID is an alias of exactly one citizen whose data agree",
    "ALIAS_AMBIGUOUS": "the legacy ID is an alias of several citizens",
    "ALIAS_CONTRADICTED": "the legacy ID's holder scores below the review threshold",
    "EXACT_UNIQUE": "one citizen has the same folded name, birth date, sex and birthplace",
    "EXACT_AMBIGUOUS": "several citizens have the same folded name, birth date, sex, birthplace",
    "ABOVE_AUTO_LINK": "best score reaches the auto-link threshold, runner-up far enough below",
    "RUNNER_UP_TOO_CLOSE": "the runner-up scores within the margin of the best candidate",
    "BETWEEN_THRESHOLDS": "best score between the review and the auto-link thresholds",
    "BELOW_REVIEW": "best score below the review threshold",
    "NO_CANDIDATE": "no citizen shares a blocking key with the record",
}


def _bits(m: float, u: float) -> float:
    return math.log2(m / u)


@dataclass(frozen=True, slots=True)
class FieldWeights:
    """Bits added by each comparison outcome, ``log2(m / u)``; the defaults' m and u below.

    Estimated from the error rates of sector data (m) and the population's spread (u), rounded;
    not fitted by EM. Hometown's u is conditional on the birthplace agreeing (they correlate).
    The name parameters are explained in the module docstring; they were set while looking at
    the benchmark's errors on the tuning seed only.
    """

    # m: share of true pairs with this outcome; u: share of random pairs with it.
    date_exact: float = _bits(0.94, 1 / (365.25 * 55))  # ~55 birth years in a working population
    date_transposed: float = _bits(0.03, 1 / (365.25 * 55))
    date_one_field_off: float = _bits(0.02, 0.02)  # u given equal names: namesakes, kin
    date_different: float = _bits(0.01, 0.995)
    sex_agree: float = _bits(0.995, 0.5)
    sex_disagree: float = _bits(0.005, 0.5)
    birthplace_agree: float = _bits(0.95, 0.06)  # u: sum of squared province shares
    birthplace_disagree: float = _bits(0.05, 0.94)
    hometown_agree: float = _bits(0.9, 0.3)
    hometown_disagree: float = _bits(0.1, 0.7)
    # Name tokens (see the module docstring).
    typo_factor: float = 0.5
    long_token: int = 7  # tokens this long may pair with 2 edits, shorter ones with 1
    max_typo_edits_long: int = 2
    near_miss_penalty: float = 4.0
    unpaired_base: float = 1.0
    unpaired_factor: float = 0.5
    unpaired_weight_cap: float = 8.0
    conflict_penalty: float = 8.0
    name_agree_cap: float = 12.0


DEFAULT_FIELD_WEIGHTS = FieldWeights()


class MatchThresholds(BaseModel):
    """Decision thresholds in bits of score (see ``FieldWeights``); a settings section.

    Defaults chosen by ``python -m bench.matching.tune`` on the labelled benchmark's tuning
    seed (7), never on the reported seed; see bench/README.md. Coincidences grow with the
    population indexed, so re-tune on data of the size in use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    auto_link: float = Field(21.0, description="Least score of an automatic link, in bits")
    review: float = Field(9.0, description="Least score sent to review, in bits")
    margin: float = Field(
        8.0, ge=0.0, description="Least lead over the runner-up for an automatic link, in bits"
    )

    @model_validator(mode="after")
    def _ordered(self) -> MatchThresholds:
        if self.review > self.auto_link:
            raise ValueError("review threshold must not exceed auto_link")
        return self


@dataclass(frozen=True, slots=True, repr=False)
class CandidateCitizen:
    """A citizen as the matcher sees it.

    ``birthplace_province``/``hometown_province``: current 2-digit codes (legacy or 3-digit
    codes are mapped; unknown ones count as missing). ``aliases``: legacy IDs (9-digit CMND,
    old PINs). ``former_names``: names before a legal change (old sector records carry them).
    """

    pin: str
    full_name: str
    birth_date: datetime.date
    sex: Sex
    birthplace_province: str | None
    hometown_province: str | None = None
    aliases: tuple[str, ...] = ()
    former_names: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CandidateCitizen(pin={mask_pin(self.pin)!r})"


@dataclass(frozen=True, slots=True, repr=False)
class SectorRecord:
    """A record from a sector system, without PIN.

    ``birthplace_province``/``hometown_province``: province codes as sent (current or legacy,
    2 or 3 digits; mapped with ``popsync.domain.provinces``), ``None`` when absent.
    """

    record_id: str
    source: SectorSource
    full_name: str
    birth_date: datetime.date
    sex: Sex
    birthplace_province: str | None = None
    hometown_province: str | None = None
    legacy_id: str | None = None

    def __repr__(self) -> str:
        return f"SectorRecord(source={self.source.value})"


@dataclass(frozen=True, slots=True)
class FieldScore:
    """One field's comparison: ``level`` is a code, ``weight`` the bits it added.

    Levels -- name: EXACT, MARKS_DIFFER, SIMILAR, DIFFERENT (suffix _FORMER if a former name
    matched best), ``similarity`` the rarity-weighted token similarity in [0, 1];
    birth_date: EXACT, TRANSPOSED, ONE_FIELD_OFF, DIFFERENT; others: AGREE, DISAGREE, MISSING.
    """

    field: str
    level: str
    weight: float
    similarity: float | None = None


@dataclass(frozen=True, slots=True, repr=False)
class ScoredCandidate:
    pin: str
    score: float
    fields: tuple[FieldScore, ...]

    def __repr__(self) -> str:
        return f"ScoredCandidate(pin={mask_pin(self.pin)!r}, score={self.score:.2f})"


@dataclass(frozen=True, slots=True, repr=False)
class Evaluation:
    """Every blocked candidate scored (best first), before any threshold is applied."""

    record_id: str
    scored: tuple[ScoredCandidate, ...]
    alias_pins: tuple[str, ...]  # citizens holding the record's legacy ID
    exact_pins: tuple[str, ...]  # citizens equal on folded name, birth date, sex, birthplace

    def __repr__(self) -> str:
        return f"Evaluation(candidates={len(self.scored)})"


@dataclass(frozen=True, slots=True, repr=False)
class MatchDecision:
    """The outcome for one record.

    ``pin``: the linked citizen (LINKED) or the top suggestion (REVIEW); None if UNMATCHED.
    ``score``/``fields``: the best candidate's score and breakdown (0.0/empty without one).
    ``candidates``: the top candidates, best first, for the review queue.
    """

    record_id: str
    outcome: MatchOutcome
    method: MatchMethod
    reason: str
    pin: str | None
    score: float
    runner_up_score: float | None
    fields: tuple[FieldScore, ...]
    candidates: tuple[ScoredCandidate, ...]
    candidates_considered: int

    def __repr__(self) -> str:
        pin = mask_pin(self.pin) if self.pin is not None else None
        return (
            f"MatchDecision(outcome={self.outcome.value}, "
            f"method={self.method.value}, reason={self.reason}, pin={pin!r}, "
            f"score={self.score:.2f})"
        )

    def audit(self) -> dict[str, object]:
        """Scores, levels and codes for the audit trail: no PIN, no name, no date, no record id
        (a sector record number can identify a person; the caller keys the audit row)."""
        return {
            "outcome": self.outcome.value,
            "method": self.method.value,
            "reason": self.reason,
            "score": round(self.score, 3),
            "runner_up_score": (
                None if self.runner_up_score is None else round(self.runner_up_score, 3)
            ),
            "candidates_considered": self.candidates_considered,
            "fields": [
                {
                    "field": f.field,
                    "level": f.level,
                    "weight": round(f.weight, 3),
                    **({} if f.similarity is None else {"similarity": round(f.similarity, 3)}),
                }
                for f in self.fields
            ],
        }


# --------------------------------------------------------------------------- preparation

_D_TO_D = str.maketrans({"đ": "d", "\u00f0": "d"})


@dataclass(frozen=True, slots=True)
class _Name:
    folded: tuple[str, ...]
    marks: tuple[str | None, ...]  # token with its diacritics (đ as d), None if it has none
    weights: tuple[float, ...]
    known: tuple[bool, ...]  # token is in the frequency table (a real name, not a typo)
    key: str


@dataclass(frozen=True, slots=True)
class _Person:
    pin: str  # the record id for a record
    names: tuple[_Name, ...]
    birth_date: datetime.date
    sex: str
    birthplace: str | None
    hometown: str | None


def _prepare_name(name: str, weights: TokenWeights) -> _Name:
    folded, marked = name_tokens(name)
    marks = tuple(
        None if m.translate(_D_TO_D) == f else m.translate(_D_TO_D)
        for f, m in zip(folded, marked, strict=True)
    )
    return _Name(
        folded=folded,
        marks=marks,
        weights=tuple(weights.weight(t) for t in folded),
        known=tuple(weights.is_known(t) for t in folded),
        key=" ".join(folded),
    )


@functools.lru_cache(maxsize=1024)
def _current_province(code: str | None) -> str | None:
    if code is None:
        return None
    try:
        return resolve_province(code).current.code
    except UnknownProvinceCode:
        return None


def _prepare_citizen(citizen: CandidateCitizen, name_of: Callable[[str], _Name]) -> _Person:
    return _Person(
        pin=citizen.pin,
        names=tuple(name_of(name) for name in (citizen.full_name, *citizen.former_names)),
        birth_date=citizen.birth_date,
        sex=citizen.sex,
        birthplace=_current_province(citizen.birthplace_province),
        hometown=_current_province(citizen.hometown_province),
    )


def _prepare_record(record: SectorRecord, name_of: Callable[[str], _Name]) -> _Person:
    return _Person(
        pin=record.record_id,
        names=(name_of(record.full_name),),
        birth_date=record.birth_date,
        sex=record.sex,
        birthplace=_current_province(record.birthplace_province),
        hometown=_current_province(record.hometown_province),
    )


def _transposed(day: datetime.date) -> datetime.date | None:
    if day.day > 12 or day.day == day.month:
        return None
    return day.replace(month=day.day, day=day.month)


@functools.lru_cache(maxsize=1 << 16)
def _deletions(token: str) -> frozenset[str]:
    variants = {token}
    if len(token) >= 3:
        variants.update(token[:i] + token[i + 1 :] for i in range(len(token)))
    return frozenset(variants)


def _normalize_alias(alias: str) -> str:
    return "".join(alias.split())


def _exact_key(person: _Person, name: _Name) -> str | None:
    if person.birthplace is None or not name.folded:
        return None
    return f"X|{name.key}|{person.birth_date.isoformat()}|{person.sex}|{person.birthplace}"


def _name_keys(name: _Name, dates: Sequence[datetime.date], sex: str) -> Iterator[str]:
    """Blocking keys; ``dates[0]`` is the date as given, the others its transposition."""
    if not name.folded:
        return
    first, last = name.folded[0], name.folded[-1]
    for day in dates:
        iso = day.isoformat()
        for variant in _deletions(last):
            yield f"G|{iso}|{variant}"
        yield f"S|{iso}|{first}|{sex}"
    day = dates[0]
    yield f"M|{day.month}-{day.day}|{first}|{last}"
    yield f"YM|{day.year}-{day.month}|{first}|{last}"
    yield f"YD|{day.year}|{day.day}|{first}|{last}"


# ------------------------------------------------------------------------------ scoring


def _compare_names(r: _Name, c: _Name, fw: FieldWeights) -> tuple[float, float, str]:
    """(bits, weighted similarity, level) of record name ``r`` against citizen name ``c``."""
    pairs: list[tuple[float, int, int, int]] = []
    for i, rt in enumerate(r.folded):
        for j, ct in enumerate(c.folded):
            if rt == ct:
                pairs.append((1.0, -abs(i - j), -i, -j))
                continue
            longest = max(len(rt), len(ct))
            allowed = fw.max_typo_edits_long if longest >= fw.long_token else 1
            edits = OSA.distance(rt, ct, score_cutoff=allowed)
            if edits <= allowed:
                pairs.append((1.0 - edits / longest, -abs(i - j), -i, -j))
    pairs.sort(reverse=True)
    used_r: set[int] = set()
    used_c: set[int] = set()
    bits = 0.0
    agree = 0.0
    total = 0.0
    near_miss = typo = False
    for sim, _, neg_i, neg_j in pairs:
        i, j = -neg_i, -neg_j
        if i in used_r or j in used_c:
            continue
        used_r.add(i)
        used_c.add(j)
        w = c.weights[j]
        total += w
        agree += w * sim
        if sim == 1.0:
            r_marks, c_marks = r.marks[i], c.marks[j]
            if r_marks is not None and c_marks is not None and r_marks != c_marks:
                bits -= fw.near_miss_penalty  # Hùng vs Hưng: another name, or a mark typo
                near_miss = True
            else:
                bits += w
        elif r.known[i]:
            bits -= fw.near_miss_penalty  # Dũng vs Hùng: another name, or a typo
            near_miss = True
        else:
            bits += w * fw.typo_factor * sim
            typo = True
    unpaired_r = unpaired_c = 0
    for weights, used, side in ((c.weights, used_c, 0), (r.weights, used_r, 1)):
        for k, w in enumerate(weights):
            if k not in used:
                total += w
                bits -= fw.unpaired_base + fw.unpaired_factor * min(w, fw.unpaired_weight_cap)
                if side == 0:
                    unpaired_c += 1
                else:
                    unpaired_r += 1
    substituted = unpaired_r > 0 and unpaired_c > 0
    if substituted or near_miss:
        bits -= fw.conflict_penalty
    bits = min(bits, fw.name_agree_cap)
    similarity = agree / total if total > 0.0 else 0.0
    if substituted or similarity < 0.5:
        level = "DIFFERENT"
    elif near_miss:
        level = "NEAR_MISS"
    elif typo or unpaired_r or unpaired_c:
        level = "SIMILAR"
    else:
        level = "EXACT"
    return bits, similarity, level


def _compare_dates(r: datetime.date, c: datetime.date, fw: FieldWeights) -> FieldScore:
    if r == c:
        return FieldScore("birth_date", "EXACT", fw.date_exact)
    if _transposed(r) == c:
        return FieldScore("birth_date", "TRANSPOSED", fw.date_transposed)
    differing = (r.year != c.year) + (r.month != c.month) + (r.day != c.day)
    if differing == 1:
        return FieldScore("birth_date", "ONE_FIELD_OFF", fw.date_one_field_off)
    return FieldScore("birth_date", "DIFFERENT", fw.date_different)


def _compare_codes(
    field: str, r: str | None, c: str | None, agree: float, disagree: float
) -> FieldScore:
    if r is None or c is None:
        return FieldScore(field, "MISSING", 0.0)
    if r == c:
        return FieldScore(field, "AGREE", agree)
    return FieldScore(field, "DISAGREE", disagree)


def _score(record: _Person, citizen: _Person, fw: FieldWeights) -> ScoredCandidate:
    r_name = record.names[0]
    best: tuple[float, float, str] | None = None
    for k, c_name in enumerate(citizen.names):
        bits, sim, level = _compare_names(r_name, c_name, fw)
        if best is None or bits > best[0]:
            best = (bits, sim, level if k == 0 else f"{level}_FORMER")
    name_bits, name_sim, name_level = best if best is not None else (0.0, 0.0, "MISSING")
    fields = (
        FieldScore("name", name_level, name_bits, name_sim),
        _compare_dates(record.birth_date, citizen.birth_date, fw),
        _compare_codes("sex", record.sex, citizen.sex, fw.sex_agree, fw.sex_disagree),
        _compare_codes(
            "birthplace_province",
            record.birthplace,
            citizen.birthplace,
            fw.birthplace_agree,
            fw.birthplace_disagree,
        ),
        _compare_codes(
            "hometown_province",
            record.hometown,
            citizen.hometown,
            fw.hometown_agree,
            fw.hometown_disagree,
        ),
    )
    return ScoredCandidate(citizen.pin, sum(f.weight for f in fields), fields)


# -------------------------------------------------------------------------------- index


_NAME_CACHE_SIZE = 1 << 18


class CitizenIndex:
    """Citizens prepared for matching (folded names, mapped provinces) and their blocking keys.

    ``add`` replaces a citizen with the same PIN; ``remove`` drops one. Removed entries leave
    tombstones in the key lists (skipped on lookup), so heavy churn calls for a rebuild.
    """

    def __init__(
        self,
        citizens: Iterable[CandidateCitizen] = (),
        *,
        token_weights: TokenWeights | None = None,
        field_weights: FieldWeights = DEFAULT_FIELD_WEIGHTS,
    ) -> None:
        self.token_weights = token_weights or default_token_weights()
        self.field_weights = field_weights
        self._slots: list[_Person | None] = []
        self._citizens: list[CandidateCitizen | None] = []
        self._slot_of: dict[str, int] = {}
        self._blocks: dict[str, list[int]] = {}
        self._exact: dict[str, list[int]] = {}
        self._aliases: dict[str, list[int]] = {}
        self._names: dict[str, _Name] = {}  # common full names recur: prepare each once
        for citizen in citizens:
            self.add(citizen)

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, pin: object) -> bool:
        return pin in self._slot_of

    def __repr__(self) -> str:
        return f"CitizenIndex(citizens={len(self)})"

    def _name(self, text: str) -> _Name:
        name = self._names.get(text)
        if name is None:
            name = _prepare_name(text, self.token_weights)
            if len(self._names) < _NAME_CACHE_SIZE:
                self._names[text] = name
        return name

    def get(self, pin: str) -> CandidateCitizen | None:
        slot = self._slot_of.get(pin)
        return None if slot is None else self._citizens[slot]

    def add(self, citizen: CandidateCitizen) -> None:
        self.remove(citizen.pin)
        person = _prepare_citizen(citizen, self._name)
        slot = len(self._slots)
        self._slots.append(person)
        self._citizens.append(citizen)
        self._slot_of[citizen.pin] = slot
        keys: set[str] = set()
        for name in person.names:
            keys.update(_name_keys(name, (person.birth_date,), person.sex))
            exact = _exact_key(person, name)
            if exact is not None:
                self._exact.setdefault(exact, []).append(slot)
        for key in keys:
            self._blocks.setdefault(key, []).append(slot)
        for alias in {_normalize_alias(a) for a in citizen.aliases}:
            if alias:
                self._aliases.setdefault(alias, []).append(slot)

    def remove(self, pin: str) -> bool:
        slot = self._slot_of.pop(pin, None)
        if slot is None:
            return False
        self._slots[slot] = None
        self._citizens[slot] = None
        return True

    def _live(self, slots: Iterable[int]) -> Iterator[_Person]:
        seen: set[int] = set()
        for slot in slots:
            person = self._slots[slot]
            if person is not None and slot not in seen:
                seen.add(slot)
                yield person

    def evaluate(self, record: SectorRecord) -> Evaluation:
        """Score every candidate that shares a blocking key (or the legacy ID) with the record."""
        person = _prepare_record(record, self._name)
        dates = [person.birth_date]
        transposed = _transposed(person.birth_date)
        if transposed is not None:
            dates.append(transposed)
        slots: list[int] = []
        for key in set(_name_keys(person.names[0], dates, person.sex)):
            slots.extend(self._blocks.get(key, ()))
        alias_slots: list[int] = []
        if record.legacy_id:
            alias_slots = self._aliases.get(_normalize_alias(record.legacy_id), [])
            slots.extend(alias_slots)
        exact = _exact_key(person, person.names[0])
        exact_slots = self._exact.get(exact, []) if exact is not None else []
        slots.extend(exact_slots)
        scored = sorted(
            (_score(person, citizen, self.field_weights) for citizen in self._live(slots)),
            key=lambda s: (-s.score, s.pin),
        )
        return Evaluation(
            record_id=record.record_id,
            scored=tuple(scored),
            alias_pins=tuple(sorted(p.pin for p in self._live(alias_slots))),
            exact_pins=tuple(sorted(p.pin for p in self._live(exact_slots))),
        )


# ------------------------------------------------------------------------------ decision


def evaluate(record: SectorRecord, index: CitizenIndex) -> Evaluation:
    """Score the record's candidates in ``index`` (no thresholds involved)."""
    return index.evaluate(record)


def decide(evaluation: Evaluation, thresholds: MatchThresholds, *, top_k: int = 3) -> MatchDecision:
    """Apply the alias, exact and probabilistic passes to an evaluation."""
    scored = evaluation.scored
    by_pin = {s.pin: s for s in scored}

    def outcome(
        result: MatchOutcome,
        method: MatchMethod,
        reason: str,
        chosen: ScoredCandidate | None,
        first: Sequence[ScoredCandidate] = (),
    ) -> MatchDecision:
        others = [s for s in scored if s is not chosen]
        shown: list[ScoredCandidate] = []
        if result is not MatchOutcome.UNMATCHED:
            for s in ([chosen] if chosen is not None else []) + [*first, *scored]:
                if len(shown) < top_k and all(s is not t for t in shown):
                    shown.append(s)
        return MatchDecision(
            record_id=evaluation.record_id,
            outcome=result,
            method=method,
            reason=reason,
            pin=chosen.pin if chosen is not None and result is not MatchOutcome.UNMATCHED else None,
            score=chosen.score if chosen is not None else 0.0,
            runner_up_score=others[0].score if others else None,
            fields=chosen.fields if chosen is not None else (),
            candidates=tuple(shown),
            candidates_considered=len(scored),
        )

    # 1. Alias.
    holders = [by_pin[p] for p in evaluation.alias_pins if p in by_pin]
    if len(holders) == 1:
        holder = holders[0]
        if holder.score >= thresholds.review:
            return outcome(MatchOutcome.LINKED, MatchMethod.ALIAS, "ALIAS", holder)
        return outcome(MatchOutcome.REVIEW, MatchMethod.ALIAS, "ALIAS_CONTRADICTED", holder)
    if len(holders) > 1:
        holders.sort(key=lambda s: (-s.score, s.pin))
        return outcome(
            MatchOutcome.REVIEW, MatchMethod.ALIAS, "ALIAS_AMBIGUOUS", holders[0], holders
        )
    # 2. Exact.
    exact = [by_pin[p] for p in evaluation.exact_pins if p in by_pin]
    if len(exact) == 1:
        hit = exact[0]
        runner = max((s.score for s in scored if s is not hit), default=None)
        if runner is None or hit.score - runner >= thresholds.margin:
            return outcome(MatchOutcome.LINKED, MatchMethod.EXACT, "EXACT_UNIQUE", hit)
        return outcome(MatchOutcome.REVIEW, MatchMethod.EXACT, "RUNNER_UP_TOO_CLOSE", hit)
    if len(exact) > 1:
        exact.sort(key=lambda s: (-s.score, s.pin))
        return outcome(MatchOutcome.REVIEW, MatchMethod.EXACT, "EXACT_AMBIGUOUS", exact[0], exact)
    # 3. Probabilistic.
    if not scored:
        return outcome(MatchOutcome.UNMATCHED, MatchMethod.NONE, "NO_CANDIDATE", None)
    best = scored[0]
    method = MatchMethod.PROBABILISTIC
    if best.score >= thresholds.auto_link:
        if len(scored) == 1 or best.score - scored[1].score >= thresholds.margin:
            return outcome(MatchOutcome.LINKED, method, "ABOVE_AUTO_LINK", best)
        return outcome(MatchOutcome.REVIEW, method, "RUNNER_UP_TOO_CLOSE", best)
    if best.score >= thresholds.review:
        return outcome(MatchOutcome.REVIEW, method, "BETWEEN_THRESHOLDS", best)
    return outcome(MatchOutcome.UNMATCHED, method, "BELOW_REVIEW", best)


def match(
    record: SectorRecord,
    index: CitizenIndex,
    thresholds: MatchThresholds | None = None,
    *,
    top_k: int = 3,
) -> MatchDecision:
    """Match one sector record against the index: ``decide(evaluate(record, index), ...)``."""
    return decide(index.evaluate(record), thresholds or MatchThresholds(), top_k=top_k)


def score_pair(
    record: SectorRecord,
    citizen: CandidateCitizen,
    *,
    token_weights: TokenWeights | None = None,
    field_weights: FieldWeights = DEFAULT_FIELD_WEIGHTS,
) -> ScoredCandidate:
    """The probabilistic score of one record against one citizen (no blocking, no passes)."""
    weights = token_weights or default_token_weights()

    def name_of(text: str) -> _Name:
        return _prepare_name(text, weights)

    return _score(
        _prepare_record(record, name_of), _prepare_citizen(citizen, name_of), field_weights
    )
