"""Name normalization, matching fold and token weights."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popsync.domain.names import (
    COMMON_NAME_TOKENS,
    MAX_NAME_LENGTH,
    NAME_BAD_CHARACTERS,
    NAME_CONTROL_CHARS,
    NAME_EMPTY,
    NAME_TOO_LONG,
    InvalidName,
    fold_for_matching,
    normalize_name,
    token_weight,
)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def strip_marks_only(text: str) -> str:
    """The naive approach: decompose and drop combining marks, no explicit đ folding."""
    return "".join(ch for ch in nfd(text) if unicodedata.category(ch) != "Mn")


VIETNAMESE_LETTERS = (
    "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ"
)
vietnamese_names = st.lists(
    st.text(alphabet=VIETNAMESE_LETTERS + VIETNAMESE_LETTERS.upper(), min_size=1, max_size=8),
    min_size=1,
    max_size=5,
).map(" ".join)

# Anything plausible or hostile: letters and marks of any script, separators, punctuation.
name_like_text = st.text(
    alphabet=st.one_of(
        st.characters(categories=["L", "M", "Zs"]),
        st.sampled_from(list(" -'\u2019\u00a0") + list(VIETNAMESE_LETTERS)),
    ),
    max_size=30,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nGUYỄN  thị   ÁNH", "Nguyễn Thị Ánh"),
        ("đặng", "Đặng"),
        ("  ĐẶNG văn   lâm ", "Đặng Văn Lâm"),
        ("trương\u00a0thị\u3000ưng", "Trương Thị Ưng"),  # NBSP, ideographic space
        ("HỒ ngọc ỨC", "Hồ Ngọc Ức"),
        ("mary-jane o'brien", "Mary-Jane O'Brien"),
        ("o\u2019neil", "O'Neil"),
        ("h'hen niê", "H'Hen Niê"),
        ("ǆenana", "ǅenana"),  # titlecase, not uppercase, for the first letter
        ("straße", "Straße"),  # "ß".upper() == "SS" must not change the length
        ("Σοφία", "Σοφία"),
        ("李 小龙", "李 小龙"),
    ],
)
def test_normalize_name_examples(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected
    assert unicodedata.is_normalized("NFC", normalize_name(raw))


def test_normalize_nfd_input_gives_nfc_output() -> None:
    raw = nfd("nguyễn thị ánh")
    assert raw != "nguyễn thị ánh"
    assert normalize_name(raw) == "Nguyễn Thị Ánh"


@pytest.mark.parametrize("raw", ["", " ", "   ", "\u00a0\u3000"])
def test_empty_names_rejected(raw: str) -> None:
    with pytest.raises(InvalidName) as excinfo:
        normalize_name(raw)
    assert excinfo.value.reason == NAME_EMPTY


@pytest.mark.parametrize(
    "raw",
    ["Nguyễn\x00An", "Nguyễn\tAn", "Nguyễn\nAn", "An\r", "\x1bAn", "An\x7f", "An\x85",
     "Ng\u200buyễn", "An\u200d", "\u202eAn", "\ufeffAn", "An\u2028Bình", "\n"],
)  # fmt: skip
def test_control_characters_rejected(raw: str) -> None:
    with pytest.raises(InvalidName) as excinfo:
        normalize_name(raw)
    assert excinfo.value.reason == NAME_CONTROL_CHARS


@pytest.mark.parametrize(
    "raw",
    ["Nguyễn Văn 2", "An3", "Trần_An", "Lê.An", "Lê@An", "Lê, An", "<script>", "An😀",
     "Ⅻ", "An ²", "-", "' -'", "\u0301An", "An \u0301", "An-\u0301"],
)  # fmt: skip
def test_bad_characters_rejected(raw: str) -> None:
    with pytest.raises(InvalidName) as excinfo:
        normalize_name(raw)
    assert excinfo.value.reason == NAME_BAD_CHARACTERS


def test_length_limit_after_normalization() -> None:
    exactly = "a" * MAX_NAME_LENGTH
    assert len(normalize_name(exactly)) == MAX_NAME_LENGTH
    # Whitespace collapsing and NFC happen before the length check.
    assert normalize_name("  " + "a " * 50) == " ".join(["A"] * 50)
    assert normalize_name(nfd("ễ") * MAX_NAME_LENGTH) == "Ễ" + "ễ" * (MAX_NAME_LENGTH - 1)
    with pytest.raises(InvalidName) as excinfo:
        normalize_name("a" * (MAX_NAME_LENGTH + 1))
    assert excinfo.value.reason == NAME_TOO_LONG


def test_invalid_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=NAME_EMPTY):
        normalize_name("")


@given(vietnamese_names)
def test_normalize_vietnamese_idempotent_and_nfd_invariant(raw: str) -> None:
    once = normalize_name(raw)
    assert normalize_name(once) == once
    assert normalize_name(nfd(raw)) == once
    assert unicodedata.is_normalized("NFC", once)
    assert all(token[0].isupper() for token in once.split(" "))


@given(name_like_text)
def test_normalize_any_text_idempotent_and_nfd_invariant(raw: str) -> None:
    try:
        once = normalize_name(raw)
    except InvalidName as exc:
        with pytest.raises(InvalidName) as again:
            normalize_name(nfd(raw))
        assert again.value.reason == exc.reason
        return
    assert normalize_name(once) == once
    assert normalize_name(nfd(raw)) == once
    assert unicodedata.is_normalized("NFC", once)
    assert len(once) <= MAX_NAME_LENGTH
    assert once == once.strip() and "  " not in once


@given(st.text(max_size=30))
def test_normalize_only_raises_invalid_name(raw: str) -> None:
    try:
        normalize_name(raw)
    except InvalidName as exc:
        assert exc.reason in {NAME_EMPTY, NAME_CONTROL_CHARS, NAME_TOO_LONG, NAME_BAD_CHARACTERS}


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("Đặng Thị Ánh", "dang thi anh"),
        ("đỗ ĐỨC   ĐẠT", "do duc dat"),
        ("Nguyễn Văn Ưng", "nguyen van ung"),
        ("Trương Thị Ơn", "truong thi on"),
        ("\u00d0ặng", "dang"),  # Ð (eth) look-alike from legacy encodings
    ],
)
def test_fold_for_matching(name: str, folded: str) -> None:
    assert fold_for_matching(name) == folded
    assert fold_for_matching(nfd(name)) == folded


def test_mark_stripping_alone_does_not_fold_d_stroke() -> None:
    # đ (U+0111) and Đ (U+0110) have no decomposition: the naive approach keeps them.
    assert unicodedata.decomposition("đ") == ""
    assert strip_marks_only("Đặng đức") == "Đang đuc"
    assert fold_for_matching("Đặng đức") == "dang duc"


@given(vietnamese_names)
def test_fold_is_ascii_for_vietnamese_and_idempotent(name: str) -> None:
    folded = fold_for_matching(name)
    assert folded.isascii()
    assert folded == folded.lower()
    assert fold_for_matching(folded) == folded
    assert fold_for_matching(normalize_name(name)) == folded


def test_common_tokens_are_folded_and_weighted_low() -> None:
    for token in COMMON_NAME_TOKENS:
        assert fold_for_matching(token) == token
        assert token_weight(token) < 1.0
    for token in ("nguyen", "tran", "le", "pham", "dang", "thi", "van", "huu"):
        assert token in COMMON_NAME_TOKENS
    assert token_weight("thi") == pytest.approx(0.2)
    assert token_weight("Nguyễn") == token_weight("nguyen")  # tolerant of unfolded input
    assert token_weight("khuc") == 1.0
    assert token_weight("anh") == 1.0


# The table fast path of fold_for_matching against the full NFC/NFD path it stands for.
from popsync.domain.names import _ONE_CHAR_FOLDS, _fold_slowly  # noqa: E402

_TABLE_CHARS = "".join(chr(code) for code in _ONE_CHAR_FOLDS)


def test_the_fold_table_covers_vietnamese_letters() -> None:
    for ch in "ăâđêôơưáàảãạấầẩẫậắằẳẵặéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựýỳỷỹỵĐ’":
        assert ord(ch) in _ONE_CHAR_FOLDS or ord(ch.lower()) in _ONE_CHAR_FOLDS, ch


def test_the_fast_fold_equals_the_full_fold_for_every_pair_of_table_characters() -> None:
    alphabet = _TABLE_CHARS + "aZ '-\t"
    for first in alphabet:
        for second in alphabet:
            text = first + second
            assert fold_for_matching(text) == _fold_slowly(text), repr(text)


@given(
    st.text(
        alphabet=st.sampled_from(_TABLE_CHARS + "abcXYZ '-\t\u00a0\u0301\u0323ĐđðІ中"),
        max_size=30,
    )
)
def test_the_fold_is_the_full_fold_for_any_text(text: str) -> None:
    assert fold_for_matching(text) == _fold_slowly(text)
    assert fold_for_matching(unicodedata.normalize("NFD", text)) == _fold_slowly(text)
