"""Vietnamese personal names with realistic frequencies, for the stream simulator.

Why frequencies matter: matching and deduplication downstream must cope with the fact that
about 38% of people are called Nguyễn and that "Thị"/"Văn" carry almost no information, so
uniformly random names would make every matching test far too easy.

Names are ordered surname, middle name(s), given name, except for Ê Đê names, which put the
clan name last ("Y Moan Ênuôl", "H'Hen Niê"). Every string is NFC, as the contract requires.
"""

from __future__ import annotations

import bisect
import itertools
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace

__all__ = [
    "ETHNICITIES",
    "GIVEN_NAMES",
    "MIDDLE_NAMES",
    "SURNAMES",
    "PersonName",
    "WeightedChoice",
    "random_full_name",
    "random_name",
    "renamed",
]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


class WeightedChoice:
    """An immutable weighted pick: one bisect per draw, cheaper than ``rng.choices``."""

    __slots__ = ("_cumulative", "_total", "items", "weights")

    def __init__(self, pairs: Sequence[tuple[str, float]]) -> None:
        if not pairs or any(weight <= 0 for _, weight in pairs):
            raise ValueError("a weighted choice needs items with positive weights")
        self.items: tuple[str, ...] = tuple(_nfc(item) for item, _ in pairs)
        self.weights: tuple[float, ...] = tuple(weight for _, weight in pairs)
        self._cumulative = list(itertools.accumulate(self.weights))
        self._total = self._cumulative[-1]

    def pick(self, rng: random.Random) -> str:
        index = bisect.bisect_right(self._cumulative, rng.random() * self._total)
        return self.items[min(index, len(self.items) - 1)]

    def share(self, item: str) -> float:
        """Probability of ``item`` (0.0 if absent), for tests and documentation."""
        return sum(w for i, w in zip(self.items, self.weights, strict=True) if i == item) / (
            self._total
        )


# Percent of the population (survey figures, rounded); Hoàng/Huỳnh and Vũ/Võ are one name
# each in the north and the south, listed separately so both spellings occur.
_MAIN_SURNAMES: tuple[tuple[str, float], ...] = (
    ("Nguyễn", 38.0), ("Trần", 11.0), ("Lê", 9.5), ("Phạm", 7.0),
    ("Hoàng", 2.6), ("Huỳnh", 2.4), ("Phan", 4.5), ("Vũ", 2.0), ("Võ", 1.9),
    ("Đặng", 2.1), ("Bùi", 2.0), ("Đỗ", 1.4), ("Hồ", 1.3), ("Ngô", 1.3),
    ("Dương", 1.0), ("Lý", 0.5),
)  # fmt: skip
# The remaining ~11.5%, relative weights within the tail.
_TAIL_SURNAMES: tuple[tuple[str, float], ...] = (
    ("Đinh", 9), ("Trương", 9), ("Đào", 8), ("Đoàn", 8), ("Lâm", 6), ("Mai", 6),
    ("Trịnh", 6), ("Lương", 5), ("Cao", 5), ("Hà", 5), ("Tạ", 4), ("Lưu", 4), ("Phùng", 3),
    ("Tô", 3), ("Triệu", 3), ("Vương", 3), ("Châu", 3), ("Quách", 3), ("Thái", 3), ("Chu", 2),
    ("Kiều", 2), ("La", 2), ("Từ", 2), ("Lại", 2), ("Khúc", 1), ("Mạc", 1), ("Nghiêm", 1),
    ("Tăng", 1), ("Âu", 1), ("Tôn", 1),
)  # fmt: skip
_TAIL_SHARE = 100.0 - sum(w for _, w in _MAIN_SURNAMES)
_TAIL_TOTAL = sum(w for _, w in _TAIL_SURNAMES)

SURNAMES = WeightedChoice(
    _MAIN_SURNAMES + tuple((n, w * _TAIL_SHARE / _TAIL_TOTAL) for n, w in _TAIL_SURNAMES)
)

# Surnames of ethnic minorities, where they differ from the Kinh distribution.
_ETHNIC_SURNAMES: dict[str, WeightedChoice] = {
    "Tày": WeightedChoice(
        [("Hoàng", 5), ("Nông", 4), ("Lương", 3), ("Lục", 2), ("Ma", 2), ("Hà", 2), ("Bế", 2),
         ("Đàm", 1)]
    ),
    "Thái": WeightedChoice(
        [("Lò", 5), ("Lường", 4), ("Cầm", 3), ("Quàng", 3), ("Vi", 2), ("Hà", 2), ("Lộc", 1)]
    ),
    "Mường": WeightedChoice([("Bùi", 5), ("Đinh", 4), ("Quách", 2), ("Hà", 2), ("Xa", 1)]),
    "Mông": WeightedChoice(
        [("Giàng", 5), ("Sùng", 4), ("Vàng", 4), ("Thào", 3), ("Mùa", 2), ("Lầu", 2), ("Hờ", 1),
         ("Vừ", 1), ("Lý", 2)]
    ),
    "Khmer": WeightedChoice(
        [("Thạch", 6), ("Danh", 4), ("Sơn", 3), ("Kim", 3), ("Lâm", 2), ("Chau", 2), ("Lý", 1)]
    ),
    "Nùng": WeightedChoice(
        [("Hoàng", 4), ("Nông", 4), ("Lương", 3), ("Vi", 2), ("Lăng", 1), ("Mã", 1)]
    ),
    "Dao": WeightedChoice([("Triệu", 5), ("Bàn", 4), ("Đặng", 3), ("Lý", 3), ("Phùng", 1)]),
    "Hoa": WeightedChoice(
        [("Lý", 4), ("Trương", 3), ("Quách", 2), ("Lâm", 3), ("Mã", 2), ("Hứa", 2), ("Tăng", 1),
         ("Lưu", 2), ("Diệp", 1), ("Tạ", 1)]
    ),
    "Ê Đê": WeightedChoice(
        [("Niê", 5), ("Mlô", 3), ("Ênuôl", 2), ("Byă", 2), ("Ksơr", 2), ("Êban", 2),
         ("Adrơng", 1)]
    ),
    "Gia Rai": WeightedChoice(
        [("Ksor", 5), ("Rmah", 4), ("Siu", 4), ("Nay", 3), ("Kpă", 2), ("Puih", 2)]
    ),
    "Chăm": WeightedChoice([("Đàng", 4), ("Thông", 2), ("Quảng", 2), ("Lưu", 2), ("Bá", 1)]),
}  # fmt: skip

# Ethnic groups the simulator knows, as civil-status registries write them.
ETHNICITIES: tuple[str, ...] = ("Kinh", *_ETHNIC_SURNAMES)

# Middle names. Older generations overwhelmingly used Văn/Thị; younger ones much less.
MIDDLE_NAMES: dict[str, WeightedChoice] = {
    "M": WeightedChoice(
        [("Hữu", 8), ("Đức", 9), ("Minh", 10), ("Quang", 8), ("Công", 6), ("Xuân", 5),
         ("Thành", 5), ("Anh", 5), ("Gia", 5), ("Hoàng", 5), ("Ngọc", 3), ("Tuấn", 3),
         ("Thanh", 5), ("Trọng", 4), ("Đình", 6), ("Bảo", 5), ("Quốc", 5), ("Trung", 3)]
    ),
    "F": WeightedChoice(
        [("Ngọc", 10), ("Thu", 7), ("Thanh", 7), ("Kim", 6), ("Thùy", 6), ("Phương", 6),
         ("Bích", 4), ("Hồng", 5), ("Mai", 4), ("Khánh", 4), ("Mỹ", 5), ("Diệu", 3),
         ("Hoài", 3), ("Như", 3), ("Bảo", 4), ("Minh", 4), ("Thảo", 3), ("Tuyết", 2)]
    ),
}  # fmt: skip
_TRADITIONAL_MIDDLE = {"M": "Văn", "F": "Thị"}

GIVEN_NAMES: dict[str, WeightedChoice] = {
    "M": WeightedChoice(
        [("Anh", 10), ("Bảo", 4), ("Bình", 4), ("Cường", 5), ("Dũng", 8), ("Duy", 5),
         ("Dương", 3), ("Đạt", 6), ("Đức", 6), ("Hải", 7), ("Hiếu", 5), ("Hiển", 2),
         ("Hòa", 4), ("Hoàng", 5), ("Hùng", 8), ("Huy", 7), ("Hưng", 5), ("Khang", 3),
         ("Khánh", 4), ("Khoa", 4), ("Kiên", 3), ("Lâm", 3), ("Long", 6), ("Lộc", 3),
         ("Mạnh", 4), ("Minh", 9), ("Nam", 8), ("Nghĩa", 4), ("Nhân", 3), ("Phong", 4),
         ("Phúc", 4), ("Phước", 3), ("Quân", 5), ("Quang", 5), ("Sơn", 6), ("Tài", 4),
         ("Tâm", 4), ("Thắng", 6), ("Thành", 7), ("Thịnh", 3), ("Toàn", 4), ("Trí", 3),
         ("Trung", 6), ("Tuấn", 9), ("Tùng", 5), ("Việt", 4), ("Vinh", 5), ("Vũ", 4),
         ("Định", 2), ("Lực", 2), ("Thái", 2), ("Hậu", 2)]
    ),
    "F": WeightedChoice(
        [("Anh", 9), ("Châu", 3), ("Chi", 5), ("Dung", 5), ("Duyên", 4), ("Giang", 5),
         ("Hà", 7), ("Hạnh", 5), ("Hằng", 6), ("Hiền", 6), ("Hoa", 6), ("Hồng", 5),
         ("Huyền", 7), ("Hương", 8), ("Lan", 7), ("Liên", 4), ("Linh", 9), ("Loan", 4),
         ("Ly", 4), ("Mai", 7), ("My", 4), ("Nga", 5), ("Ngân", 5), ("Ngọc", 6), ("Nhung", 5),
         ("Nhi", 5), ("Oanh", 3), ("Phương", 7), ("Quyên", 3), ("Quỳnh", 5), ("Tâm", 4),
         ("Thảo", 8), ("Thanh", 5), ("Thơ", 2), ("Thủy", 7), ("Thư", 5), ("Trâm", 4),
         ("Trang", 9), ("Tuyết", 3), ("Uyên", 4), ("Vân", 5), ("Vy", 5), ("Xuân", 3),
         ("Yến", 6), ("Diệp", 2), ("Khánh", 3), ("Hậu", 2), ("Nhàn", 2)]
    ),
}  # fmt: skip

# Names with their own stock in the simulator (everyone else uses the general pools).
_MONG_GIVEN = {
    "M": WeightedChoice([("Páo", 4), ("Dình", 3), ("Chư", 2), ("Sình", 3), ("Chứ", 2),
                         ("Lử", 2), ("Tủa", 2), ("Súa", 2)]),
    "F": WeightedChoice([("Mỷ", 3), ("Dợ", 2), ("Chu", 2), ("Sua", 2), ("Pà", 2), ("Say", 2),
                         ("Dính", 2), ("Mai", 1)]),
}  # fmt: skip
_EDE_GIVEN = {
    "M": WeightedChoice([("Moan", 2), ("Bih", 2), ("Ngông", 2), ("Jut", 1), ("Khu", 1),
                         ("Siêng", 1), ("Duôn", 1), ("Tlang", 1)]),
    # Ê Đê women's names carry the "H'" prefix as part of the given name.
    "F": WeightedChoice([("H'Hen", 2), ("H'Linh", 2), ("H'Nga", 2), ("H'Yam", 1),
                         ("H'Mơ", 1), ("H'Ni", 1), ("H'Drim", 1), ("H'Bia", 1)]),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PersonName:
    """A name kept in parts, so a child can inherit a surname and a rename can keep it."""

    surname: str
    middle: tuple[str, ...]
    given: str
    clan_last: bool = False  # Ê Đê order: "Y Moan Ênuôl"

    @property
    def full(self) -> str:
        if self.clan_last:
            return " ".join((*self.middle, self.given, self.surname))
        return " ".join((self.surname, *self.middle, self.given))


def _check_sex(sex: str) -> str:
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    return sex


def _traditional_share(sex: str, birth_year: int | None) -> float:
    """Share of Văn/Thị as middle name: ~60%/85% before 1960, falling to ~20%/30% by 2010."""
    old, young = (0.60, 0.20) if sex == "M" else (0.85, 0.30)
    if birth_year is None:
        return (old + young) / 2
    position = min(max((birth_year - 1960) / 50, 0.0), 1.0)
    return old + (young - old) * position


def _middle(rng: random.Random, sex: str, birth_year: int | None) -> tuple[str, ...]:
    if rng.random() < _traditional_share(sex, birth_year):
        first = _TRADITIONAL_MIDDLE[sex]
        # "Nguyễn Thị Ngọc Anh": a second, meaningful middle name after Thị/Văn.
        if rng.random() < (0.15 if sex == "F" else 0.04):
            return (first, MIDDLE_NAMES[sex].pick(rng))
        return (first,)
    return (MIDDLE_NAMES[sex].pick(rng),)


def random_name(
    rng: random.Random,
    sex: str,
    *,
    ethnicity: str = "Kinh",
    birth_year: int | None = None,
) -> PersonName:
    """A plausible name for someone of this sex, ethnicity and (optionally) birth year."""
    sex = _check_sex(sex)
    if ethnicity == "Ê Đê":
        if sex == "M":
            return PersonName(_ETHNIC_SURNAMES[ethnicity].pick(rng), ("Y",),
                              _EDE_GIVEN["M"].pick(rng), clan_last=True)  # fmt: skip
        return PersonName(_ETHNIC_SURNAMES[ethnicity].pick(rng), (), _EDE_GIVEN["F"].pick(rng),
                          clan_last=True)  # fmt: skip
    surnames = _ETHNIC_SURNAMES.get(ethnicity, SURNAMES)
    if ethnicity == "Mông":
        middle = ("A",) if sex == "M" else ("Thị",)
        return PersonName(surnames.pick(rng), middle, _MONG_GIVEN[sex].pick(rng))
    return PersonName(surnames.pick(rng), _middle(rng, sex, birth_year), GIVEN_NAMES[sex].pick(rng))


def random_full_name(
    rng: random.Random,
    sex: str,
    *,
    ethnicity: str = "Kinh",
    birth_year: int | None = None,
) -> str:
    """A plausible full name as one NFC string, e.g. "Nguyễn Thị Thu Trang"."""
    return random_name(rng, sex, ethnicity=ethnicity, birth_year=birth_year).full


def renamed(rng: random.Random, name: PersonName, sex: str) -> PersonName:
    """The name after a legal name change: same surname, a new given (and often middle) name."""
    sex = _check_sex(sex)
    if name.clan_last:
        pool = _EDE_GIVEN[sex]
    elif name.middle and name.middle[0] == "A" and sex == "M":
        pool = _MONG_GIVEN[sex]
    else:
        pool = GIVEN_NAMES[sex]
    given = name.given
    while given == name.given:
        given = pool.pick(rng)
    if not name.clan_last and rng.random() < 0.4:
        return replace(name, middle=(MIDDLE_NAMES[sex].pick(rng),), given=given)
    return replace(name, given=given)
