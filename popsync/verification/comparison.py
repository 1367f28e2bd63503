"""What `match` means, attribute by attribute, and what a verifying partner may learn.

- full name: equal once both are folded as record matching folds them (NFC, đ/Đ to d,
  marks, case and spacing dropped: `popsync.domain.names.fold_for_matching`);
- birth date, sex: equal;
- residence: the current province equal (a pre-2025 code is mapped first), and the
  commune/ward equal when one is given.

A partner verifies; it does not look up. So a PIN that does not exist and a PIN whose
citizen matches neither the name nor the birth date given get the same answer: every
attribute `no_match`, `alive` null, after the same work. Sex and residence are compared
only when the name matches (sex is written in the PIN itself, and a birth date can be
found by trying the 365 days of the PIN's year), and `alive` is told only when the name
and the birth date both match.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from popsync.domain.names import fold_for_matching
from popsync.verification.models import (
    CitizenView,
    LookupField,
    Match,
    VerifyAnswer,
    VerifyRequest,
)

_ALIVE = "ALIVE"


@dataclass(frozen=True, slots=True)
class CitizenRecord:
    """A citizen's row of the central store, as the read path selects it."""

    pin: str
    full_name: str | None
    birth_date: datetime.date | None
    sex: str | None
    life_status: str
    death_date: datetime.date | None
    nationality: str | None
    ethnicity: str | None
    birthplace_province: str | None
    marital_status: str
    permanent_province: str | None
    permanent_commune: str | None
    temporary_province: str | None
    temporary_commune: str | None
    id_card_number: str | None


# The columns of CitizenRecord, in order, for the SELECT that fills it.
RECORD_COLUMNS: tuple[str, ...] = tuple(CitizenRecord.__dataclass_fields__)


class ResultClass(StrEnum):
    """How an answer is classed in the audit and the metrics (never shown to partners
    who may not tell them apart)."""

    MATCH = "match"  # every attribute given matches
    PARTIAL = "partial"  # the name or the birth date matches, something else does not
    NO_MATCH = "no_match"  # the citizen exists, neither name nor birth date matches
    NOT_FOUND = "not_found"  # no citizen has this PIN
    FOUND = "found"  # a look-up answered


def _name_matches(given: str, stored: str | None) -> bool:
    return stored is not None and fold_for_matching(given) == fold_for_matching(stored)


def _given(request: VerifyRequest) -> list[str]:
    given = (
        ("full_name", request.full_name),
        ("birth_date", request.birth_date),
        ("sex", request.sex),
        ("residence", request.residence),
    )
    return [name for name, value in given if value is not None]


# What a PIN without a citizen is compared with: the same folds and comparisons as for a
# citizen who matches nothing, so that an answer's time does not tell whether the PIN
# exists (its result is thrown away).
_DECOY = CitizenRecord(
    pin="",
    full_name="Nguyễn Thị Thanh Hương",
    birth_date=None,
    sex=None,
    life_status="",
    death_date=None,
    nationality=None,
    ethnicity=None,
    birthplace_province=None,
    marital_status="",
    permanent_province=None,
    permanent_commune=None,
    temporary_province=None,
    temporary_commune=None,
    id_card_number=None,
)


def compare(
    request: VerifyRequest, record: CitizenRecord | None
) -> tuple[VerifyAnswer, ResultClass]:
    """The answer to one verification, and its class for the audit."""
    stored = record if record is not None else _DECOY
    checks: dict[str, bool] = {}
    if request.full_name is not None:
        checks["full_name"] = _name_matches(request.full_name, stored.full_name)
    if request.birth_date is not None:
        checks["birth_date"] = request.birth_date == stored.birth_date
    if record is None:
        return _nothing_matches(request), ResultClass.NOT_FOUND
    if not (checks.get("full_name") or checks.get("birth_date")):
        return _nothing_matches(request), ResultClass.NO_MATCH
    # Sex and residence only for a partner who knows the name: the birth year is in the PIN,
    # so a birth date can be found by trying 365 days, and must not open the rest.
    named = checks.get("full_name") is True
    if request.sex is not None:
        checks["sex"] = named and request.sex.value == record.sex
    if request.residence is not None:
        residence = request.residence
        checks["residence"] = (
            named
            and residence.province == record.permanent_province
            and (residence.commune is None or residence.commune == record.permanent_commune)
        )
    identified = named and checks.get("birth_date") is True
    answer = VerifyAnswer(
        attributes={name: Match.MATCH if ok else Match.NO_MATCH for name, ok in checks.items()},
        alive=(record.life_status == _ALIVE) if identified else None,
    )
    return answer, ResultClass.MATCH if all(checks.values()) else ResultClass.PARTIAL


def _nothing_matches(request: VerifyRequest) -> VerifyAnswer:
    return VerifyAnswer(attributes=dict.fromkeys(_given(request), Match.NO_MATCH), alive=None)


def _residence(province: str | None, commune: str | None) -> dict[str, str] | None:
    if province is None:
        return None
    return {"province": province, "commune": commune} if commune else {"province": province}


def view(record: CitizenRecord, allowed: frozenset[LookupField]) -> CitizenView:
    """The citizen with only the fields `allowed` (a partner's policy)."""
    values: dict[str, Any] = {
        LookupField.FULL_NAME: record.full_name,
        LookupField.BIRTH_DATE: record.birth_date,
        LookupField.SEX: record.sex,
        LookupField.LIFE_STATUS: record.life_status,
        LookupField.DEATH_DATE: record.death_date,
        LookupField.NATIONALITY: record.nationality,
        LookupField.ETHNICITY: record.ethnicity,
        LookupField.BIRTHPLACE_PROVINCE: record.birthplace_province,
        LookupField.MARITAL_STATUS: record.marital_status,
        LookupField.PERMANENT_RESIDENCE: _residence(
            record.permanent_province, record.permanent_commune
        ),
        LookupField.TEMPORARY_RESIDENCE: _residence(
            record.temporary_province, record.temporary_commune
        ),
        LookupField.ID_CARD_NUMBER: record.id_card_number,
    }
    shown = {str(field.value): values[field] for field in LookupField if field in allowed}
    return CitizenView(pin=record.pin, **shown)
