"""What `match` means for each attribute, and what a verifying partner may learn: a PIN
that does not exist and one whose citizen matches neither the name nor the birth date
given get byte-identical answers; `alive` only when the name and the birth date match;
a look-up shows only the fields of the partner's policy."""

from __future__ import annotations

import dataclasses
import datetime
import json
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from popsync.domain.names import normalize_name
from popsync.domain.provinces import LEGACY_PROVINCES
from popsync.verification.comparison import (
    RECORD_COLUMNS,
    CitizenRecord,
    ResultClass,
    compare,
    view,
)
from popsync.verification.models import LookupField, Match, VerifyRequest

PIN = "079090000123"
BIRTH = datetime.date(1990, 5, 17)
NAME = "Đặng Thị Ánh"  # as the store holds it (normalize_name)
M, NO = Match.MATCH, Match.NO_MATCH

CITIZEN = CitizenRecord(
    pin=PIN,
    full_name=NAME,
    birth_date=BIRTH,
    sex="F",
    life_status="ALIVE",
    death_date=None,
    nationality="VN",
    ethnicity="KINH",
    birthplace_province="79",
    marital_status="SINGLE",
    permanent_province="79",
    permanent_commune="26734",
    temporary_province="01",
    temporary_commune=None,
    id_card_number="079190000123",
)
DECEASED = dataclasses.replace(
    CITIZEN, life_status="DECEASED", death_date=datetime.date(2024, 1, 2)
)


def ask(**fields: object) -> VerifyRequest:
    return VerifyRequest.model_validate({"pin": PIN, **fields})


def answer_of(request: VerifyRequest, record: CitizenRecord | None = CITIZEN) -> dict[str, object]:
    answer, _ = compare(request, record)
    return json.loads(answer.model_dump_json())


def test_record_columns_are_the_fields_of_a_record_in_order() -> None:
    assert tuple(field.name for field in dataclasses.fields(CitizenRecord)) == RECORD_COLUMNS
    assert RECORD_COLUMNS[0] == "pin"


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "given",
    [
        "Đặng Thị Ánh",
        "Dang Thi Anh",  # no diacritics, đ typed as d
        "dang thi anh",
        "DANG THI ANH",
        "ĐẶNG THỊ ÁNH",
        "đặng thị ánh",
        "  Đặng   Thị\u00a0 Ánh  ",  # extra and non-breaking spaces
        unicodedata.normalize("NFD", "Đặng Thị Ánh"),  # decomposed, as some keyboards send
        unicodedata.normalize("NFD", "ĐẶNG THỊ ÁNH"),
        "\u00d0ặng Thị Ánh",  # Ð (eth), from legacy Vietnamese encodings
        "\u00f0ặng thị ánh",  # ð
        "Dặng Thị Ánh",
        "Đang Thi Anh",
    ],
)
def test_a_name_matches_whatever_its_form_case_spacing_or_diacritics(given: str) -> None:
    assert answer_of(ask(full_name=given)) == {"attributes": {"full_name": "match"}, "alive": None}


@pytest.mark.parametrize(
    "given",
    [
        "Đặng Thị Anh Thư",  # a token more
        "Đặng Thị",  # a token less
        "Đoàn Thị Ánh",
        "Thị Ánh Đặng",  # the same tokens in another order
        "ĐặngThị Ánh",  # a space missing
        "Đặng Thi Ành Ánh",
        "Dương Thị Ánh",
    ],
)
def test_another_name_does_not_match(given: str) -> None:
    answer, result = compare(ask(full_name=given), CITIZEN)
    assert answer.attributes == {"full_name": NO}
    assert result is ResultClass.NO_MATCH


def test_d_and_dj_fold_alike_in_the_store_and_in_the_question() -> None:
    stored = dataclasses.replace(CITIZEN, full_name="Đỗ Đức Đạt")
    for asked in ("Do Duc Dat", "ĐỖ ĐỨC ĐẠT", "ðỗ ðức ðạt", "do  duc   dat", "Đo Đuc Đat"):
        assert answer_of(ask(full_name=asked), stored)["attributes"] == {"full_name": "match"}
    assert answer_of(ask(full_name="To Duc Dat"), stored)["attributes"] == {"full_name": "no_match"}


def test_names_with_hyphens_and_apostrophes_match_in_any_case() -> None:
    stored = dataclasses.replace(CITIZEN, full_name=normalize_name("h'hen niê"))
    assert stored.full_name == "H'Hen Niê"
    for asked in ("H'Hen Niê", "h'hen nie", "H'HEN NIÊ"):
        assert answer_of(ask(full_name=asked), stored)["attributes"] == {"full_name": "match"}


def test_a_name_typed_with_a_typographic_apostrophe_matches_the_stored_ascii_one() -> None:
    """The store keeps names as `normalize_name` makes them, with "'" for "’" (what word
    processors type, popsync.domain.names); a partner's "H’Hen Niê" is the same name."""
    stored = dataclasses.replace(CITIZEN, full_name=normalize_name("H’Hen Niê"))
    assert stored.full_name == "H'Hen Niê"
    assert answer_of(ask(full_name="H’Hen Niê"), stored)["attributes"] == {"full_name": "match"}


def test_a_citizen_without_a_name_in_the_store_matches_no_name() -> None:
    nameless = dataclasses.replace(CITIZEN, full_name=None)
    answer, result = compare(ask(full_name=NAME), nameless)
    assert answer.attributes == {"full_name": NO}
    assert result is ResultClass.NO_MATCH


# -------------------------------------------------------------------- dates and sex


def test_a_birth_date_matches_only_the_same_day() -> None:
    assert answer_of(ask(birth_date=BIRTH))["attributes"] == {"birth_date": "match"}
    for other in (
        BIRTH + datetime.timedelta(days=1),
        BIRTH.replace(year=1991),
        datetime.date(1990, 7, 15),
    ):
        assert answer_of(ask(birth_date=other))["attributes"] == {"birth_date": "no_match"}


def test_a_birth_date_unknown_to_the_store_matches_nothing() -> None:
    undated = dataclasses.replace(CITIZEN, birth_date=None)
    assert answer_of(ask(birth_date=BIRTH), undated)["attributes"] == {"birth_date": "no_match"}


def test_sex_is_compared_once_the_name_or_the_birth_date_matches() -> None:
    assert answer_of(ask(full_name=NAME, sex="F"))["attributes"] == {
        "full_name": "match",
        "sex": "match",
    }
    assert answer_of(ask(birth_date=BIRTH, sex="M"))["attributes"] == {
        "birth_date": "match",
        "sex": "no_match",
    }


def test_sex_is_not_compared_when_neither_the_name_nor_the_birth_date_matches() -> None:
    """Sex is written in the PIN: its match alone would tell that the PIN exists."""
    answer, result = compare(ask(full_name="Lê Văn Tám", sex="F"), CITIZEN)
    assert answer.attributes == {"full_name": NO, "sex": NO}
    assert result is ResultClass.NO_MATCH


# ------------------------------------------------------------------------ residence


@pytest.mark.parametrize("province", ["79", "079", "74", "074", "77", " 74 "])
def test_a_residence_given_with_a_current_or_pre_2025_code_matches_the_current_province(
    province: str,
) -> None:
    # 74 (Bình Dương) and 77 (Bà Rịa - Vũng Tàu) are part of TP. Hồ Chí Minh (79) since 2025
    answer = answer_of(ask(full_name=NAME, residence={"province": province}))
    assert answer["attributes"] == {"full_name": "match", "residence": "match"}


@pytest.mark.parametrize(
    ("residence", "expected"),
    [
        ({"province": "79", "commune": "26734"}, "match"),
        ({"province": "74", "commune": "26734"}, "match"),
        ({"province": "79", "commune": "26737"}, "no_match"),
        ({"province": "75"}, "no_match"),  # Đồng Nai
        ({"province": "70"}, "no_match"),  # Bình Phước, now part of Đồng Nai
        ({"province": "01", "commune": "26734"}, "no_match"),
    ],
)
def test_the_commune_must_match_too_when_it_is_given(
    residence: dict[str, str], expected: str
) -> None:
    answer = answer_of(ask(full_name=NAME, residence=residence))
    assert answer["attributes"] == {"full_name": "match", "residence": expected}


def test_the_temporary_residence_is_not_the_permanent_one() -> None:
    answer = answer_of(ask(full_name=NAME, residence={"province": "01"}))
    assert answer["attributes"]["residence"] == "no_match"  # type: ignore[index]


def test_a_citizen_without_a_permanent_residence_matches_none() -> None:
    homeless = dataclasses.replace(CITIZEN, permanent_province=None, permanent_commune=None)
    answer = answer_of(ask(full_name=NAME, residence={"province": "79"}), homeless)
    assert answer["attributes"] == {"full_name": "match", "residence": "no_match"}


def test_a_commune_given_for_a_citizen_without_one_does_not_match() -> None:
    no_commune = dataclasses.replace(CITIZEN, permanent_commune=None)
    answer = answer_of(
        ask(full_name=NAME, residence={"province": "79", "commune": "26734"}), no_commune
    )
    assert answer["attributes"] == {"full_name": "match", "residence": "no_match"}
    answer = answer_of(ask(full_name=NAME, residence={"province": "79"}), no_commune)
    assert answer["attributes"] == {"full_name": "match", "residence": "match"}


# ---------------------------------------------------------------------------- alive


@pytest.mark.parametrize(
    ("record", "alive"), [(CITIZEN, True), (DECEASED, False)], ids=["alive", "deceased"]
)
def test_alive_is_told_when_the_name_and_the_birth_date_both_match(
    record: CitizenRecord, alive: bool
) -> None:
    answer, result = compare(ask(full_name="dang thi anh", birth_date=BIRTH), record)
    assert answer.alive is alive
    assert answer.attributes == {"full_name": M, "birth_date": M}
    assert result is ResultClass.MATCH


@pytest.mark.parametrize("record", [CITIZEN, DECEASED], ids=["alive", "deceased"])
@pytest.mark.parametrize(
    "fields",
    [
        {"full_name": NAME},
        {"birth_date": BIRTH},
        {"full_name": NAME, "sex": "F", "residence": {"province": "79"}},
        {"full_name": NAME, "birth_date": "1990-05-18"},
        {"full_name": "Lê Văn Tám", "birth_date": BIRTH},
    ],
)
def test_alive_is_null_unless_both_the_name_and_the_birth_date_match(
    record: CitizenRecord, fields: dict[str, object]
) -> None:
    answer, _ = compare(ask(**fields), record)
    assert answer.alive is None


def test_any_other_life_status_than_alive_is_not_alive() -> None:
    missing = dataclasses.replace(CITIZEN, life_status="MISSING")
    answer, _ = compare(ask(full_name=NAME, birth_date=BIRTH), missing)
    assert answer.alive is False


# ---------------------------------------------------------------- result classes


@pytest.mark.parametrize(
    ("fields", "record", "result"),
    [
        ({"full_name": NAME, "birth_date": BIRTH, "sex": "F"}, CITIZEN, ResultClass.MATCH),
        ({"full_name": NAME, "birth_date": BIRTH, "sex": "M"}, CITIZEN, ResultClass.PARTIAL),
        ({"full_name": NAME, "birth_date": "1991-05-17"}, CITIZEN, ResultClass.PARTIAL),
        ({"full_name": "Lê Văn Tám", "birth_date": BIRTH}, CITIZEN, ResultClass.PARTIAL),
        ({"full_name": "Lê Văn Tám", "birth_date": "1991-05-17"}, CITIZEN, ResultClass.NO_MATCH),
        ({"full_name": NAME, "birth_date": BIRTH}, None, ResultClass.NOT_FOUND),
    ],
)
def test_each_answer_is_classed_for_the_audit(
    fields: dict[str, object], record: CitizenRecord | None, result: ResultClass
) -> None:
    assert compare(ask(**fields), record)[1] is result


def test_a_partial_answer_tells_each_attribute() -> None:
    fields = {
        "full_name": NAME,
        "birth_date": "1991-05-17",
        "sex": "F",
        "residence": {"province": "74"},
    }
    answer, result = compare(ask(**fields), CITIZEN)
    assert answer.attributes == {"full_name": M, "birth_date": NO, "sex": M, "residence": M}
    assert list(answer.attributes) == ["full_name", "birth_date", "sex", "residence"]
    assert answer.alive is None
    assert result is ResultClass.PARTIAL


# ------------------------------------------------------------- indistinguishability


_QUESTIONS = [
    {"full_name": "Lê Văn Tám"},
    {"birth_date": "1991-01-01"},
    {"full_name": "Lê Văn Tám", "birth_date": "1991-01-01"},
    {"full_name": "Lê Văn Tám", "sex": "F"},
    {"birth_date": "1991-01-01", "sex": "F", "residence": {"province": "79", "commune": "26734"}},
    {
        "full_name": "Lê Văn Tám",
        "birth_date": "1991-01-01",
        "sex": "F",
        "residence": {"province": "74"},
    },
]


@pytest.mark.parametrize("fields", _QUESTIONS)
@pytest.mark.parametrize("record", [CITIZEN, DECEASED], ids=["alive", "deceased"])
def test_an_unknown_pin_and_a_citizen_matching_neither_name_nor_birth_date_answer_alike(
    fields: dict[str, object], record: CitizenRecord
) -> None:
    question = ask(**fields)
    absent, absent_class = compare(question, None)
    present, present_class = compare(question, record)
    assert absent.model_dump_json().encode() == present.model_dump_json().encode()
    assert present.alive is None and set(present.attributes.values()) == {NO}
    assert (absent_class, present_class) == (ResultClass.NOT_FOUND, ResultClass.NO_MATCH)


# --------------------------------------------------------------- property tests

# Letters of Vietnamese names, precomposed, with each tone and vowel mark.
_LETTERS = (
    "aáàảãạăắằẳẵặâấầẩẫậbcdđeéèẻẽẹêếềểễệghiíìỉĩịklmnoóòỏõọôốồổỗộơớờởỡợpqrstuúùủũụưứừửữựvxyýỳỷỹỵ"
)
_TOKENS = st.text(alphabet=_LETTERS, min_size=1, max_size=7)
_NAMES = st.lists(_TOKENS, min_size=1, max_size=5).map(" ".join)
_PROVINCES = st.sampled_from(sorted(LEGACY_PROVINCES))
_COMMUNES = st.none() | st.text("0123456789", min_size=5, max_size=5)
_DATES = st.dates(datetime.date(1900, 1, 1), datetime.date(2030, 12, 31))


@st.composite
def _requests(draw: st.DrawFn) -> VerifyRequest:
    name = draw(st.none() | _NAMES | st.text(min_size=1, max_size=30).filter(str.strip))
    birth = draw(st.none() | _DATES) if name is not None else draw(_DATES)
    residence = draw(
        st.none() | st.builds(lambda p, c: {"province": p, "commune": c}, _PROVINCES, _COMMUNES)
    )
    return VerifyRequest.model_validate(
        {
            "pin": PIN,
            "full_name": name,
            "birth_date": birth,
            "sex": draw(st.none() | st.sampled_from(["M", "F"])),
            "residence": residence,
        }
    )


@st.composite
def _records(draw: st.DrawFn) -> CitizenRecord:
    province = draw(
        st.none() | st.sampled_from(sorted({p.merged_into for p in LEGACY_PROVINCES.values()}))
    )
    return dataclasses.replace(
        CITIZEN,
        full_name=draw(st.none() | _NAMES.map(normalize_name)),
        birth_date=draw(st.none() | _DATES),
        sex=draw(st.none() | st.sampled_from(["M", "F"])),
        life_status=draw(st.sampled_from(["ALIVE", "DECEASED"])),
        permanent_province=province,
        permanent_commune=draw(_COMMUNES) if province else None,
    )


@settings(max_examples=300, deadline=None)
@given(_requests(), st.none() | _records())
def test_compare_answers_every_request_about_every_record(
    question: VerifyRequest, record: CitizenRecord | None
) -> None:
    answer, result = compare(question, record)
    asked = [
        f
        for f in ("full_name", "birth_date", "sex", "residence")
        if getattr(question, f) is not None
    ]
    assert list(answer.attributes) == asked
    both = answer.attributes.get("full_name") is M and answer.attributes.get("birth_date") is M
    assert (answer.alive is not None) == both
    if record is None:
        assert result is ResultClass.NOT_FOUND
    elif not (answer.attributes.get("full_name") is M or answer.attributes.get("birth_date") is M):
        assert result is ResultClass.NO_MATCH
        assert answer.model_dump_json() == compare(question, None)[0].model_dump_json()


@settings(max_examples=200, deadline=None)
@given(_requests(), _records())
def test_a_citizen_matching_neither_name_nor_birth_date_is_as_if_absent(
    question: VerifyRequest, record: CitizenRecord
) -> None:
    other = dataclasses.replace(
        record,
        full_name="Zzz Qqq" if question.full_name is not None else record.full_name,
        birth_date=datetime.date(1800, 1, 1),
    )
    assume(
        question.full_name is None
        or compare(ask(full_name=question.full_name), other)[1] is ResultClass.NO_MATCH
    )
    assert (
        compare(question, other)[0].model_dump_json()
        == compare(question, None)[0].model_dump_json()
    )


def _spaced(tokens: list[str], spaces: list[str]) -> str:
    return "".join(t + s for t, s in zip(tokens, spaces, strict=True))


@settings(max_examples=300, deadline=None)
@given(
    _NAMES,
    st.sampled_from(["NFC", "NFD"]),
    st.sampled_from([str.lower, str.upper, str.title, str]),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_fold_equivalent_names_always_match(
    name: str, form: str, case: object, strip_marks: bool, eth: bool, data: st.DataObject
) -> None:
    stored = dataclasses.replace(CITIZEN, full_name=normalize_name(name))
    given_name = case(name)  # type: ignore[operator]
    if strip_marks:
        given_name = (
            "".join(
                ch
                for ch in unicodedata.normalize("NFD", given_name)
                if not unicodedata.combining(ch)
            )
            .replace("đ", "d")
            .replace("Đ", "D")
        )
    if eth:
        given_name = given_name.replace("đ", "\u00f0").replace("Đ", "\u00d0")
    tokens = given_name.split(" ")
    spaces = data.draw(
        st.lists(
            st.sampled_from([" ", "  ", "\u00a0", " \t "]),
            min_size=len(tokens),
            max_size=len(tokens),
        )
    )
    given_name = unicodedata.normalize(form, " " + _spaced(tokens, spaces))
    answer, _ = compare(ask(full_name=given_name), stored)
    assert answer.attributes == {"full_name": M}


# ----------------------------------------------------------------------------- view


def test_a_view_shows_the_pin_and_only_the_fields_of_the_policy() -> None:
    shown = view(CITIZEN, frozenset({LookupField.FULL_NAME, LookupField.LIFE_STATUS}))
    assert json.loads(shown.model_dump_json()) == {
        "pin": PIN,
        "full_name": NAME,
        "life_status": "ALIVE",
    }


def test_a_view_for_a_policy_without_fields_shows_only_the_pin() -> None:
    assert json.loads(view(CITIZEN, frozenset()).model_dump_json()) == {"pin": PIN}


def test_a_view_of_every_field() -> None:
    shown = json.loads(view(DECEASED, frozenset(LookupField)).model_dump_json())
    assert shown == {
        "pin": PIN,
        "full_name": NAME,
        "birth_date": "1990-05-17",
        "sex": "F",
        "life_status": "DECEASED",
        "death_date": "2024-01-02",
        "nationality": "VN",
        "ethnicity": "KINH",
        "birthplace_province": "79",
        "marital_status": "SINGLE",
        "permanent_residence": {"province": "79", "commune": "26734"},
        "temporary_residence": {"province": "01"},
        "id_card_number": "079190000123",
    }


def test_a_field_allowed_but_unknown_is_null_one_not_allowed_is_absent() -> None:
    shown = json.loads(
        view(
            CITIZEN, frozenset({LookupField.DEATH_DATE, LookupField.TEMPORARY_RESIDENCE})
        ).model_dump_json()
    )
    assert shown == {"pin": PIN, "death_date": None, "temporary_residence": {"province": "01"}}
    homeless = dataclasses.replace(CITIZEN, permanent_province=None, permanent_commune=None)
    shown = json.loads(
        view(homeless, frozenset({LookupField.PERMANENT_RESIDENCE})).model_dump_json()
    )
    assert shown == {"pin": PIN, "permanent_residence": None}


@settings(max_examples=100, deadline=None)
@given(st.frozensets(st.sampled_from(list(LookupField))))
def test_a_view_never_shows_a_field_outside_the_policy(allowed: frozenset[LookupField]) -> None:
    shown = json.loads(view(DECEASED, allowed).model_dump_json())
    assert set(shown) == {"pin"} | {field.value for field in allowed}


def test_a_birth_date_alone_does_not_open_sex_or_residence() -> None:
    """The PIN holds the birth year: a date is found by trying 365 days, so matching it must
    not tell the residence or the sex; only the name does."""
    answer = answer_of(ask(birth_date=BIRTH, sex="F", residence={"province": "79"}))
    assert answer["attributes"] == {
        "birth_date": "match",
        "sex": "no_match",
        "residence": "no_match",
    }
    assert answer["alive"] is None


def test_an_unknown_pin_is_compared_with_a_decoy_doing_the_same_folds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from popsync.verification import comparison

    folds: list[str] = []
    real = comparison.fold_for_matching

    def counting(name: str) -> str:
        folds.append(name)
        return real(name)

    monkeypatch.setattr(comparison, "fold_for_matching", counting)
    asked = ask(full_name="Trần Văn Khác", birth_date=datetime.date(1991, 1, 1))
    compare(asked, None)
    missing = len(folds)
    folds.clear()
    compare(asked, CITIZEN)
    assert missing == len(folds) == 2
