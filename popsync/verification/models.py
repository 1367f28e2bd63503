"""The verification service's HTTP contract: what partners send and what they get back.

Requests refuse unknown fields and wrong types (422, naming the field); values are
checked here once, so the service's steps work on well-formed data only.
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from popsync.contract import models as m
from popsync.domain.pin import PinError, parse_pin
from popsync.domain.provinces import UnknownProvinceCode, resolve_province

MAX_NAME_CHARS = 200  # a stored name is at most 100 (popsync.domain.names); room for spacing


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def checked_pin(value: str) -> str:
    """The PIN if it is well formed (12 digits, a known province prefix, a gender/century
    digit); ValueError naming what is wrong otherwise (never echoing the value)."""
    if value != value.strip():  # parse_pin strips; the PIN read and audited must be exact
        raise ValueError("PIN_NOT_12_DIGITS: spaces around the PIN")
    try:
        parse_pin(value)
    except PinError as exc:
        raise ValueError(str(exc)) from None
    return value


class Residence(_Request):
    """A permanent residence: the province (current or pre-2025 code), optionally the
    commune/ward code."""

    province: Annotated[str, Field(min_length=2, max_length=3, examples=["79"])]
    commune: Annotated[str | None, Field(None, pattern=r"^[0-9]{5}$", examples=["26734"])]

    @field_validator("province")
    @classmethod
    def _known_province(cls, value: str) -> str:
        try:
            return resolve_province(value).current.code
        except UnknownProvinceCode:
            raise ValueError("not a current or pre-2025 province code") from None


class VerifyRequest(_Request):
    """A PIN and what the partner believes about its citizen. A name or a birth date is
    required: sex, and the birth year, can be read from the PIN itself."""

    pin: Annotated[str, Field(min_length=12, max_length=12, examples=["079203000123"])]
    full_name: Annotated[str | None, Field(None, min_length=1, max_length=MAX_NAME_CHARS)]
    birth_date: datetime.date | None = None
    sex: m.Sex | None = None
    residence: Residence | None = None

    @field_validator("pin")
    @classmethod
    def _well_formed_pin(cls, value: str) -> str:
        return checked_pin(value)

    @model_validator(mode="after")
    def _identifying_attribute(self) -> VerifyRequest:
        if self.full_name is None and self.birth_date is None:
            raise ValueError("give full_name or birth_date (sex alone can be read from the PIN)")
        return self


# Parsing stops past this many items, whatever the settings allow (POPSYNC_SERVE__
# BATCH_MAX_ITEMS is at most this): a large body of small bad items must not cost the
# process seconds of CPU building errors.
MAX_BATCH_ITEMS = 10_000


class VerifyBatchRequest(_Request):
    items: Annotated[list[VerifyRequest], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]

    @model_validator(mode="after")
    def _each_pin_once(self) -> VerifyBatchRequest:
        # The same PIN many times in one batch would try many birth dates at once.
        first: dict[str, int] = {}
        for index, item in enumerate(self.items):
            seen = first.setdefault(item.pin, index)
            if seen != index:
                raise ValueError(f"items {seen} and {index} ask about the same PIN; ask once")
        return self


class Match(StrEnum):
    MATCH = "match"
    NO_MATCH = "no_match"


class VerifyAnswer(BaseModel):
    """Per attribute asked, whether it matches the register; nothing else about the
    citizen. `alive` is told only when the name and the birth date were both given and
    both match; otherwise it is null."""

    model_config = ConfigDict(frozen=True)

    attributes: dict[str, Match]
    alive: bool | None


class VerifyBatchAnswer(BaseModel):
    results: list[VerifyAnswer]


class LookupField(StrEnum):
    """What a partner's policy may let `GET /v1/citizens/{pin}` return."""

    FULL_NAME = "full_name"
    BIRTH_DATE = "birth_date"
    SEX = "sex"
    LIFE_STATUS = "life_status"
    DEATH_DATE = "death_date"
    NATIONALITY = "nationality"
    ETHNICITY = "ethnicity"
    BIRTHPLACE_PROVINCE = "birthplace_province"
    MARITAL_STATUS = "marital_status"
    PERMANENT_RESIDENCE = "permanent_residence"
    TEMPORARY_RESIDENCE = "temporary_residence"
    ID_CARD_NUMBER = "id_card_number"


class CitizenView(BaseModel):
    """A citizen as one partner's policy lets it see them: the PIN and the allowed
    fields; a field the policy does not allow is absent (not null)."""

    model_config = ConfigDict(extra="allow")

    pin: str


class ErrorBody(BaseModel):
    """Every refusal: a code to act on and one line for people."""

    error: str
    message: str
    detail: list[dict[str, Any]] | None = None
