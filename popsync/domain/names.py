"""Normalization and matching keys for personal names.

The same Vietnamese name arrives precomposed (NFC) or decomposed (NFD) depending on the
registry's keyboard and platform, so everything starts with NFC. For matching, diacritics are
removed; "đ" is a letter of its own (U+0111) with no Unicode decomposition, so stripping
combining marks leaves it untouched and it must be folded to "d" explicitly. Very common
surnames and middle names carry little identifying weight.
"""

from __future__ import annotations

import functools
import unicodedata

__all__ = [
    "COMMON_NAME_TOKENS",
    "COMMON_TOKEN_WEIGHT",
    "DEFAULT_TOKEN_WEIGHT",
    "MAX_NAME_LENGTH",
    "NAME_BAD_CHARACTERS",
    "NAME_CONTROL_CHARS",
    "NAME_EMPTY",
    "NAME_TOO_LONG",
    "InvalidName",
    "fold_for_matching",
    "normalize_name",
    "token_weight",
]

MAX_NAME_LENGTH = 100
# Raw input longer than this is rejected before any per-character work, so an absurdly long
# value (a 1 MB "name") costs microseconds, not a second of the worker's event loop. Generous
# enough for every name that normalizes to MAX_NAME_LENGTH: NFD triples Vietnamese letters
# with two diacritics, and whitespace runs collapse.
_MAX_RAW_NAME_LENGTH = 10 * MAX_NAME_LENGTH

NAME_EMPTY = "NAME_EMPTY"
NAME_CONTROL_CHARS = "NAME_CONTROL_CHARS"
NAME_TOO_LONG = "NAME_TOO_LONG"
NAME_BAD_CHARACTERS = "NAME_BAD_CHARACTERS"

# Invisible or line-breaking characters: a name containing them is a corrupt record (or a
# log/display injection attempt), so it is rejected instead of silently cleaned. Tabs and
# newlines are Cc and are rejected too; only space separators (Zs) are collapsed.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_MARK_CATEGORIES = frozenset({"Mn", "Mc"})
_HYPHEN = "-"
_APOSTROPHE = "'"
_TYPOGRAPHIC_APOSTROPHE = "\u2019"  # ’ — what word processors type; stored as "'"


class InvalidName(ValueError):
    """A name was rejected; ``reason`` is one of the NAME_* constants."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _check_characters(tokens: list[str]) -> None:
    has_letter = False
    for token in tokens:
        previous = ""
        for ch in token:
            category = unicodedata.category(ch)
            if category.startswith("L"):
                has_letter = True
            elif category in _MARK_CATEGORIES:
                # A diacritic must sit on a letter (or stack on another diacritic).
                if not previous or unicodedata.category(previous)[0] not in "LM":
                    raise InvalidName(NAME_BAD_CHARACTERS, "combining mark without a base letter")
            elif ch not in (_HYPHEN, _APOSTROPHE):
                raise InvalidName(
                    NAME_BAD_CHARACTERS, f"character U+{ord(ch):04X} ({category}) not allowed"
                )
            previous = ch
    if not has_letter:
        raise InvalidName(NAME_BAD_CHARACTERS, "name contains no letters")


def _map_single(ch: str, mapped: str) -> str:
    # Expanding case mappings ("ß" -> "SS", "ŉ" -> "ʼN") would change length and break
    # idempotency, so such characters are kept as they are.
    return mapped if len(mapped) == 1 else ch


def _case_segment(segment: str) -> str:
    if not segment:
        return segment
    head = _map_single(segment[0], segment[0].title())
    return head + "".join(_map_single(ch, ch.lower()) for ch in segment[1:])


def _case_token(token: str) -> str:
    # Parts after a hyphen or an apostrophe are capitalized too: Ê Đê and Gia Rai
    # names are written "H'Hen", "Y'Ngông" (and "O'Brien", "Mary-Jane" elsewhere).
    return _HYPHEN.join(
        _APOSTROPHE.join(_case_segment(piece) for piece in part.split(_APOSTROPHE))
        for part in token.split(_HYPHEN)
    )


@functools.lru_cache(maxsize=65_536)  # names repeat (a citizen's events, common names)
def normalize_name(raw: str) -> str:
    """Canonical stored form: "nGUYỄN  thị   ÁNH" -> "Nguyễn Thị Ánh".

    NFC, whitespace collapsed, each token capitalized (first letter upper, rest lower).
    Allowed: letters of any script with their diacritics, space, hyphen, apostrophe.
    Raises InvalidName. Idempotent, and NFC/NFD input give the same result.
    """
    if len(raw) > _MAX_RAW_NAME_LENGTH:
        raise InvalidName(NAME_TOO_LONG, f"name longer than {MAX_NAME_LENGTH} characters")
    text = unicodedata.normalize("NFC", raw)
    if any(unicodedata.category(ch) in _CONTROL_CATEGORIES for ch in text):
        raise InvalidName(NAME_CONTROL_CHARS, "name contains control or format characters")
    # With control characters excluded, str.split() splits exactly on space separators (Zs).
    tokens = text.replace(_TYPOGRAPHIC_APOSTROPHE, _APOSTROPHE).split()
    if not tokens:
        raise InvalidName(NAME_EMPTY, "name is empty")
    _check_characters(tokens)
    # Case mapping can yield sequences that compose differently, hence the second NFC.
    result = unicodedata.normalize("NFC", " ".join(_case_token(t) for t in tokens))
    if len(result) > MAX_NAME_LENGTH:
        raise InvalidName(NAME_TOO_LONG, f"name longer than {MAX_NAME_LENGTH} characters")
    return result


# "đ"/"Đ" have no decomposition. U+00D0/U+00F0 (Ð/ð, eth) look identical to Đ/đ and turn
# up in text converted from legacy Vietnamese encodings, so they are folded as well.
# The typographic apostrophe is folded to the ASCII one, as `normalize_name` stores it, so
# "H’Hen" typed by a person matches "H'Hen" in the register.
_D_FOLD = str.maketrans(
    {"đ": "d", "Đ": "d", "\u00d0": "d", "\u00f0": "d", _TYPOGRAPHIC_APOSTROPHE: _APOSTROPHE}
)


def _fold_slowly(name: str) -> str:
    text = unicodedata.normalize("NFC", name).translate(_D_FOLD).casefold()
    stripped = "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn"
    )
    return " ".join(unicodedata.normalize("NFC", stripped).split())


def _one_char_folds() -> dict[int, str]:
    """Each precomposed letter of the Latin blocks (Vietnamese's among them) whose fold is
    plain ASCII letters, with that fold. Only characters NFC leaves as they are: in a text
    of these and ASCII, NFC changes nothing and every later step works character by
    character, so folding each one alone folds the whole (tested over every pair)."""
    table = {}
    for code in [*range(0x00C0, 0x0250), *range(0x1E00, 0x1F00), 0x2019]:
        ch = chr(code)
        folded = _fold_slowly(ch)
        if (
            unicodedata.normalize("NFC", ch) == ch
            and folded.isascii()
            and (folded.isalpha() or folded == _APOSTROPHE)
        ):
            table[code] = folded
    return table


_ONE_CHAR_FOLDS = _one_char_folds()


def fold_for_matching(name: str) -> str:
    """Accent-, case- and spacing-insensitive key: "Đặng Thị Ánh" -> "dang thi anh".

    Does not validate; use on already-accepted names or on candidate text. Names of ASCII
    and precomposed Latin letters (nearly all, Vietnamese included) take a table lookup,
    about five times faster; anything else (combining marks, other scripts, non-ASCII
    spaces) the full NFC/NFD path, which gives the same result for the former.
    """
    text = name.translate(_ONE_CHAR_FOLDS)
    if text.isascii():
        return " ".join(text.lower().split())
    return _fold_slowly(name)


# Folded tokens shared by a large share of the population: the most frequent surnames
# (the top ~15 cover roughly 90% of Vietnamese people) and the most frequent middle names.
# Folding merges some distinct names (Đinh/Đình -> dinh, Vũ/Vu -> vu); all are common.
COMMON_NAME_TOKENS: frozenset[str] = frozenset(
    {
        # surnames
        "nguyen", "tran", "le", "pham", "hoang", "huynh", "phan", "vu", "vo", "dang",
        "bui", "do", "ho", "ngo", "duong", "ly", "dinh", "truong", "dao", "doan",
        # middle names
        "thi", "van", "huu", "duc", "ngoc", "minh", "thanh", "quang", "xuan", "cong",
        "kim", "thu", "hong", "bao", "gia",
    }
)  # fmt: skip

COMMON_TOKEN_WEIGHT = 0.2
DEFAULT_TOKEN_WEIGHT = 1.0


def token_weight(folded_token: str) -> float:
    """Identifying weight of one name token: low for very common tokens, 1.0 otherwise.

    The token is folded again (a no-op for folded input) so "Nguyễn" is not mistaken for rare.
    """
    if fold_for_matching(folded_token) in COMMON_NAME_TOKENS:
        return COMMON_TOKEN_WEIGHT
    return DEFAULT_TOKEN_WEIGHT
