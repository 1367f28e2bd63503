"""Record matching without a PIN: folding, token weights, the three passes, thresholds."""

from __future__ import annotations

import datetime
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bench.matching.generate import generate
from bench.matching.harness import core
from popsync.domain.pin import Sex
from popsync.identity import (
    CandidateCitizen,
    CitizenIndex,
    Evaluation,
    MatchMethod,
    MatchOutcome,
    MatchThresholds,
    ScoredCandidate,
    SectorRecord,
    SectorSource,
    TokenWeights,
    decide,
    default_token_weights,
    fold_for_matching,
    match,
    name_tokens,
    score_pair,
)

D = datetime.date
BIRTH = D(1990, 3, 7)
PIN_HUNG = "079090000001"
PIN_DUNG = "079090000002"
PIN_LAN = "001190000003"
PIN_LAN_NAMESAKE = "001185000004"


def citizen(
    pin: str,
    name: str,
    birth: D = BIRTH,
    sex: Sex = "M",
    *,
    birthplace: str = "79",
    aliases: tuple[str, ...] = (),
    former_names: tuple[str, ...] = (),
) -> CandidateCitizen:
    return CandidateCitizen(
        pin, name, birth, sex, birthplace, "79", aliases=aliases, former_names=former_names
    )


def record(
    name: str,
    birth: D = BIRTH,
    sex: Sex = "M",
    *,
    birthplace: str | None = "79",
    hometown: str | None = None,
    legacy_id: str | None = None,
) -> SectorRecord:
    return SectorRecord(
        "R1", SectorSource.SOCIAL_INSURANCE, name, birth, sex, birthplace, hometown, legacy_id
    )


@pytest.fixture(scope="module")
def index() -> CitizenIndex:
    return CitizenIndex(
        [
            citizen(PIN_HUNG, "Nguyễn Văn Hùng", aliases=("123456789",)),
            # his twin: same surname, middle name, birth date and places
            citizen(PIN_DUNG, "Nguyễn Văn Dũng"),
            citizen(PIN_LAN, "Nguyễn Thị Lan", D(1990, 5, 6), "F", birthplace="01"),
            # her namesake in the same province, born another day
            citizen(
                PIN_LAN_NAMESAKE, "Nguyễn Thị Lan", D(1985, 11, 20), "F", birthplace="01"
            ),  # fmt: skip
        ]
    )


# ------------------------------------------------------------------------------ folding


def test_fold_turns_d_stroke_into_d() -> None:
    assert fold_for_matching("Đặng Đình Đức") == "dang dinh duc"
    naive = "".join(c for c in unicodedata.normalize("NFD", "đ") if unicodedata.category(c) != "Mn")
    assert naive == "đ"  # stripping combining marks alone does not do it


def test_fold_nfc_and_nfd_inputs_are_equal() -> None:
    nfc = unicodedata.normalize("NFC", "Nguyễn Thị Ánh Tuyết")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert fold_for_matching(nfc) == fold_for_matching(nfd) == "nguyen thi anh tuyet"
    assert name_tokens(nfc) == name_tokens(nfd)


def test_name_tokens_keep_marks_and_drop_apostrophes() -> None:
    assert name_tokens("H'Hen  Niê") == (("hhen", "nie"), ("hhen", "niê"))
    assert name_tokens("Trần Thị Mai-Anh")[0] == ("tran", "thi", "mai", "anh")


@given(st.text(max_size=40))
def test_fold_is_idempotent_and_normalization_invariant(text: str) -> None:
    folded = fold_for_matching(text)
    assert fold_for_matching(folded) == folded
    assert fold_for_matching(unicodedata.normalize("NFC", text)) == folded
    assert fold_for_matching(unicodedata.normalize("NFD", text)) == folded


@given(st.text(alphabet="aăâbcdđeêghiklmnoôơpqrstuưvxyĐĂÂÊÔƠƯ \u0300\u0301\u0303\u0309\u0323"))
def test_fold_of_vietnamese_is_ascii(text: str) -> None:
    assert fold_for_matching(text).isascii()


def test_common_tokens_weigh_little() -> None:
    weights = default_token_weights()
    rare = weights.weight("oanh")
    for common in ("nguyen", "thi", "van"):
        assert weights.weight(common) < 2.5
        assert weights.weight(common) < rare / 3
    assert weights.weight("Nguyễn") == weights.weight("nguyen")  # folded on the way
    assert weights.weight("zzqx") == weights.max_weight  # unseen: capped


def test_token_weights_from_names() -> None:
    weights = TokenWeights.from_names(["Nguyễn Văn A", "Nguyễn Thị B", "Trần Văn C", "Lê D"])
    assert weights.weight("nguyen") < weights.weight("tran")
    assert weights.weight("NGUYỄN") == weights.weight("nguyen")
    with pytest.raises(ValueError):
        TokenWeights.from_counts({"a": 1}, 0)


# ----------------------------------------------------------------------- deterministic


def test_alias_links(index: CitizenIndex) -> None:
    decision = match(record("Nguyen Van Hung", legacy_id=" 123456789 "), index)
    assert (decision.outcome, decision.method, decision.pin) == (
        MatchOutcome.LINKED,
        MatchMethod.ALIAS,
        PIN_HUNG,
    )


def test_alias_contradicted_by_the_data_goes_to_review(index: CitizenIndex) -> None:
    decision = match(record("Trần Thị Mai", D(1970, 1, 1), "F", legacy_id="123456789"), index)
    assert decision.outcome is MatchOutcome.REVIEW
    assert decision.reason == "ALIAS_CONTRADICTED"


def test_alias_held_by_several_citizens_goes_to_review() -> None:
    index = CitizenIndex(
        [
            citizen("079090000011", "Lê Văn An", aliases=("111",)),
            citizen("079090000012", "Lê Văn Bình", aliases=("111",)),
        ]  # fmt: skip
    )
    decision = match(record("Lê Văn An", legacy_id="111"), index)
    assert (decision.outcome, decision.reason) == (MatchOutcome.REVIEW, "ALIAS_AMBIGUOUS")


def test_exact_unique_links(index: CitizenIndex) -> None:
    decision = match(record("Nguyễn Văn Hùng"), index)
    assert (decision.outcome, decision.method, decision.pin) == (
        MatchOutcome.LINKED,
        MatchMethod.EXACT,
        PIN_HUNG,
    )
    assert decision.runner_up_score is not None  # the twin was considered


def test_exact_ambiguous_twins_go_to_review() -> None:
    # Twins named Hùng and Hưng fold to the same key; a record without marks cannot tell.
    index = CitizenIndex(
        [citizen(PIN_HUNG, "Nguyễn Văn Hùng"), citizen(PIN_DUNG, "Nguyễn Văn Hưng")]
    )
    decision = match(record("NGUYEN VAN HUNG"), index)
    assert (decision.outcome, decision.reason) == (MatchOutcome.REVIEW, "EXACT_AMBIGUOUS")
    assert {c.pin for c in decision.candidates} == {PIN_HUNG, PIN_DUNG}


def test_twin_with_another_given_name_is_not_linked(index: CitizenIndex) -> None:
    # Dũng's record links to Dũng, never to his twin Hùng.
    decision = match(record("Nguyen Van Dung"), index)
    assert (decision.outcome, decision.pin) == (MatchOutcome.LINKED, PIN_DUNG)
    # An absent third sibling (another given name) is not linked to either.
    decision = match(record("Nguyễn Văn Lâm"), index)
    assert decision.outcome is not MatchOutcome.LINKED


# ------------------------------------------------------------------------ probabilistic


def test_typo_and_missing_diacritics_still_link(index: CitizenIndex) -> None:
    decision = match(record("NGUYEN VAN HUMG", hometown="79"), index)
    assert (decision.outcome, decision.method, decision.pin) == (
        MatchOutcome.LINKED,
        MatchMethod.PROBABILISTIC,
        PIN_HUNG,
    )
    name = decision.fields[0]
    assert (name.field, name.level) == ("name", "SIMILAR")


def test_swapped_day_and_month_scores_as_near() -> None:
    lan = citizen(PIN_LAN, "Nguyễn Thị Lan", D(1990, 5, 6), "F", birthplace="01")
    exact = score_pair(record("Nguyễn Thị Lan", D(1990, 5, 6), "F", birthplace="01"), lan)
    swapped = score_pair(record("Nguyễn Thị Lan", D(1990, 6, 5), "F", birthplace="01"), lan)
    other = score_pair(record("Nguyễn Thị Lan", D(1990, 8, 19), "F", birthplace="01"), lan)
    assert swapped.fields[1].level == "TRANSPOSED"
    assert other.score < swapped.score < exact.score
    assert swapped.score >= MatchThresholds().auto_link


def test_swapped_record_links(index: CitizenIndex) -> None:
    decision = match(record("Nguyen Thi Lan", D(1990, 6, 5), "F", birthplace="01"), index)
    assert (decision.outcome, decision.pin) == (MatchOutcome.LINKED, PIN_LAN)


def test_namesake_in_same_province_with_other_birth_date_is_not_linked(
    index: CitizenIndex,
) -> None:
    decision = match(record("Nguyễn Thị Lan", D(1979, 2, 14), "F", birthplace="01"), index)
    assert decision.outcome is not MatchOutcome.LINKED


def test_legacy_province_code_is_mapped(index: CitizenIndex) -> None:
    # 74 (Bình Dương) has been part of 79 (TP. Hồ Chí Minh) since 2025-07-01; 3-digit form too.
    for code in ("74", "079"):
        decision = match(record("Nguyen Van Hung", birthplace=code), index)
        assert (decision.outcome, decision.pin) == (MatchOutcome.LINKED, PIN_HUNG)


def test_unknown_person_is_unmatched(index: CitizenIndex) -> None:
    decision = match(record("Phùng Thị Yến", D(1964, 9, 9), "F"), index)
    assert decision.outcome is MatchOutcome.UNMATCHED
    assert decision.pin is None


# ------------------------------------------------------------------------- thresholds


def _evaluation(*scores: float) -> Evaluation:
    return Evaluation(
        record_id="R1",
        scored=tuple(ScoredCandidate(f"07909000000{i}", s, ()) for i, s in enumerate(scores)),
        alias_pins=(),
        exact_pins=(),
    )


@pytest.mark.parametrize(
    ("auto_link", "review", "margin", "scores", "outcome", "reason"),
    [
        (20, 10, 5, (25.0, 12.0), "LINKED", "ABOVE_AUTO_LINK"),
        (26, 10, 5, (25.0, 12.0), "REVIEW", "BETWEEN_THRESHOLDS"),
        (20, 10, 15, (25.0, 12.0), "REVIEW", "RUNNER_UP_TOO_CLOSE"),
        (30, 26, 5, (25.0, 12.0), "UNMATCHED", "BELOW_REVIEW"),
        (20, 10, 5, (), "UNMATCHED", "NO_CANDIDATE"),
    ],
)
def test_thresholds_are_honoured(
    auto_link: float,
    review: float,
    margin: float,
    scores: tuple[float, ...],
    outcome: str,
    reason: str,
) -> None:
    thresholds = MatchThresholds(auto_link=auto_link, review=review, margin=margin)
    decision = decide(_evaluation(*scores), thresholds)
    assert (decision.outcome.value, decision.reason) == (outcome, reason)


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValidationError):
        MatchThresholds(auto_link=10, review=12)
    with pytest.raises(ValidationError):
        MatchThresholds(margin=-1)
    with pytest.raises(ValidationError):
        MatchThresholds(auto_link=20, review=10, margin=5, extra=1)  # type: ignore[call-arg]


def test_review_shows_top_candidates_best_first() -> None:
    decision = decide(_evaluation(15.0, 14.0, 13.0, 12.0), MatchThresholds(), top_k=3)
    assert decision.outcome is MatchOutcome.REVIEW
    assert [c.score for c in decision.candidates] == [15.0, 14.0, 13.0]


# ------------------------------------------------------------------ index and privacy


def test_index_replaces_and_removes_by_pin() -> None:
    index = CitizenIndex([citizen(PIN_HUNG, "Nguyễn Văn Hùng")])
    index.add(citizen(PIN_HUNG, "Nguyễn Văn Hùng", D(1991, 1, 1)))
    assert len(index) == 1
    assert match(record("Nguyễn Văn Hùng", D(1991, 1, 1)), index).pin == PIN_HUNG
    assert match(record("Nguyễn Văn Hùng"), index).outcome is not MatchOutcome.LINKED
    assert index.remove(PIN_HUNG) and PIN_HUNG not in index
    assert match(record("Nguyễn Văn Hùng", D(1991, 1, 1)), index).outcome is MatchOutcome.UNMATCHED


def test_former_name_matches() -> None:
    index = CitizenIndex([citizen(PIN_HUNG, "Nguyễn Minh Khang", former_names=("Nguyễn Văn Tèo",))])
    decision = match(record("Nguyen Van Teo", hometown="79"), index)
    assert (decision.outcome, decision.pin) == (MatchOutcome.LINKED, PIN_HUNG)
    assert decision.fields[0].level.endswith("_FORMER")


def test_no_personal_data_in_texts(index: CitizenIndex) -> None:
    decision = match(record("Nguyễn Văn Hùng"), index)
    texts = [repr(decision), str(decision.audit()), repr(decision.candidates), repr(index)]
    texts += [
        repr(index.get(PIN_HUNG)),
        repr(record("Nguyễn Văn Hùng")),
        repr(index.evaluate(record("Nguyễn Văn Hùng"))),
    ]
    for text in texts:
        assert PIN_HUNG not in text
        assert "Hùng" not in text and "hung" not in text.lower()
        assert "1990" not in text and "R1" not in text


# -------------------------------------------------------------------------- benchmark


def test_benchmark_generator_end_to_end_precision() -> None:
    benchmark = generate(seed=3, citizens=3_000, records=600)
    again = generate(seed=3, citizens=3_000, records=600)
    assert [r.record.full_name for r in benchmark.records] == [
        r.record.full_name for r in again.records
    ]  # seeded
    assert any("twin" in p.tags for p in benchmark.people)
    assert any(r.true_pin is None for r in benchmark.records)
    index = CitizenIndex(benchmark.citizens())
    decisions = [match(item.record, index) for item in benchmark.records]
    figures = core(benchmark.records, decisions)
    assert figures.precision >= 0.99
    assert figures.recall >= 0.95
