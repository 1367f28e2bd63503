"""Folding and token weights for matching personal names.

``fold_for_matching`` is the one fold of the code base (``popsync.domain.names``), re-exported
here: NFC first (the same name arrives precomposed or decomposed), casefold, ``đ``/``Đ`` (and
the look-alike eth ``ð``/``Ð``) to ``d`` *explicitly* -- U+0111 has no Unicode decomposition,
so stripping combining marks leaves it untouched -- then combining marks removed and spaces
collapsed: ``"Đặng  Thị Ánh"`` -> ``"dang thi anh"``. It is idempotent and gives the same
result for NFC and NFD input.

Token weights say how much agreeing on a folded token identifies a person. A token's weight
is its inverse document frequency in bits, ``-log2 p(token)``, where ``p`` is the share of
names that contain it: about 38% of people are called Nguyễn and most older women carry
Thị, so "nguyen" and "thi" weigh 1-2 bits, while an uncommon given name such as "oanh"
weighs 7-8. Weights are capped (``max_weight``) so that one unseen token -- usually a typo --
cannot dominate a comparison.

The default table (``default_token_weights``) is measured on names drawn from the
simulator's frequency tables (``popsync.dev.simulate.names``: survey surname shares, Văn/Thị
shares by birth year, given names, the names of ethnic minorities mixed in by province as
``popsync.dev.simulate.geography`` does), with a fixed seed, so it is deterministic. In
production, build the table from the names actually held (``TokenWeights.from_names``).
"""

from __future__ import annotations

import functools
import math
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from popsync.domain.names import fold_for_matching

__all__ = [
    "DEFAULT_MAX_TOKEN_WEIGHT",
    "TokenWeights",
    "default_token_weights",
    "fold_for_matching",
    "name_tokens",
]

DEFAULT_MAX_TOKEN_WEIGHT = 10.0
_DEFAULT_SAMPLE = 20_000
_DEFAULT_SEED = 20250701
_VOCABULARY_DRAWS = 200  # per ethnicity and sex, to list the names of minorities
_SMOOTHING = 0.5  # added to every count (Jeffreys prior): unseen tokens get a finite weight

_APOSTROPHES = str.maketrans({"'": None, "\u2019": None, "-": " "})


@functools.lru_cache(maxsize=1 << 16)
def _fold_token(token: str) -> str:
    return fold_for_matching(token)


def name_tokens(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(folded, marked)`` tokens of a name, aligned one to one.

    ``marked`` keeps the diacritics (NFC, casefolded) so a comparison can tell "Hùng" from
    "Hưng" when the record carries marks; ``folded`` is ``fold_for_matching`` of each token.
    Hyphens separate tokens and apostrophes are dropped ("H'Hen" -> "hhen"), because records
    write Ê Đê and Gia Rai names with and without them.
    """
    marked_text = unicodedata.normalize("NFC", name).casefold().translate(_APOSTROPHES)
    marked: list[str] = []
    folded: list[str] = []
    for token in marked_text.split():
        key = _fold_token(token)
        if key:  # a token of marks only folds to nothing
            marked.append(token)
            folded.append(key)
    return tuple(folded), tuple(marked)


@dataclass(frozen=True, slots=True)
class TokenWeights:
    """IDF weight in bits of each folded name token.

    ``probabilities`` maps a folded token to the share of names containing it;
    ``unknown_probability`` is used for any other token. Weights never exceed ``max_weight``.
    """

    probabilities: Mapping[str, float]
    unknown_probability: float
    max_weight: float = DEFAULT_MAX_TOKEN_WEIGHT
    _cache: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.unknown_probability <= 1.0:
            raise ValueError("unknown_probability must be in (0, 1]")
        if self.max_weight <= 0.0:
            raise ValueError("max_weight must be positive")
        if any(not 0.0 < p <= 1.0 for p in self.probabilities.values()):
            raise ValueError("token probabilities must be in (0, 1]")

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, float],
        names: float,
        *,
        max_weight: float = DEFAULT_MAX_TOKEN_WEIGHT,
    ) -> TokenWeights:
        """From ``counts[token]`` = number of names (out of ``names``) containing the token.

        Tokens are folded (counts of tokens that fold alike are added). Counts are smoothed
        by +0.5, so a token seen in no name gets ``0.5 / (names + 1)``.
        """
        if names <= 0:
            raise ValueError("names must be positive")
        folded: dict[str, float] = {}
        for token, count in counts.items():
            if count < 0:
                raise ValueError("counts must not be negative")
            key = fold_for_matching(token)
            folded[key] = folded.get(key, 0.0) + count
        denominator = names + 2 * _SMOOTHING
        probabilities = {
            token: min((count + _SMOOTHING) / denominator, 1.0)
            for token, count in folded.items()
            if token
        }
        return cls(
            MappingProxyType(probabilities),
            unknown_probability=_SMOOTHING / denominator,
            max_weight=max_weight,
        )

    @classmethod
    def from_names(
        cls, names: Iterable[str], *, max_weight: float = DEFAULT_MAX_TOKEN_WEIGHT
    ) -> TokenWeights:
        """Measure the table on full names (e.g. every name in the population store)."""
        counts: Counter[str] = Counter()
        total = 0
        for name in names:
            total += 1
            counts.update(set(name_tokens(name)[0]))
        return cls.from_counts(counts, max(total, 1), max_weight=max_weight)

    def is_known(self, token: str) -> bool:
        """True if the (folded) token is in the table: a real name rather than a typo."""
        return token in self.probabilities

    def weight(self, token: str) -> float:
        """Weight in bits of one token (folded first if it is not in the table as given)."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        probability = self.probabilities.get(token)
        if probability is None:
            probability = self.probabilities.get(fold_for_matching(token), self.unknown_probability)
        value = min(-math.log2(probability), self.max_weight)
        if len(self._cache) < 100_000:  # typos make the token space unbounded
            self._cache[token] = value
        return value


def _simulated_counts(count: int, seed: int) -> tuple[Counter[str], int]:
    # Imported here: only the default table needs the simulator.
    from popsync.dev.simulate import geography
    from popsync.dev.simulate.names import (
        ETHNICITIES,
        GIVEN_NAMES,
        MIDDLE_NAMES,
        SURNAMES,
        random_name,
    )

    rng = random.Random(seed)  # noqa: S311 -- a frequency table, not a secret
    counts: Counter[str] = Counter()
    for _ in range(count):
        unit = geography.pick_unit(rng)
        ethnicity = geography.pick_ethnicity(rng, geography.current_of(unit))
        sex = "M" if rng.random() < 0.5 else "F"
        birth_year = 1935 + int(rng.random() * 80)
        drawn = random_name(rng, sex, ethnicity=ethnicity, birth_year=birth_year)
        counts.update(set(name_tokens(drawn.full)[0]))
    # Every name the simulator can produce is a known name, even if too rare to be drawn.
    vocabulary = [*SURNAMES.items]
    for sex in ("M", "F"):
        vocabulary += [*MIDDLE_NAMES[sex].items, *GIVEN_NAMES[sex].items]
        for ethnicity in ETHNICITIES:
            for _ in range(_VOCABULARY_DRAWS):
                vocabulary.append(random_name(rng, sex, ethnicity=ethnicity).full)
    for text in vocabulary:
        for token in name_tokens(text)[0]:
            counts[token] += 0
    return counts, count


@functools.cache
def default_token_weights() -> TokenWeights:
    """Weights measured on 20,000 names drawn (seed 20250701) from the simulator's tables.

    Birth years 1935-2014 uniformly, provinces by population with their ethnic mix; every
    name in the simulator's pools is in the table (a known name), even if never drawn. Yields
    e.g. nguyen ~1.5 bits, thi ~1.6, van ~2.2, anh ~4.2, oanh ~7.2, and ``max_weight`` (10)
    for any token outside the table.
    """
    counts, names = _simulated_counts(_DEFAULT_SAMPLE, _DEFAULT_SEED)
    return TokenWeights.from_counts(counts, names)
