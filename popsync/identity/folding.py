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

The default table (``default_token_weights``) is read from ``token_weights.tsv``, shipped in
this package: how many of a sample of names contain each folded token, with the parameters that
produced it in its header. The names are drawn from the development simulator's frequency
tables by ``python -m popsync.dev.token_weights``, which writes the file; production only reads
it, so it never imports or runs the simulator, and a change to those tables shows as a diff of
the file. In production, build the table from the names actually held
(``TokenWeights.from_names``).
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

from popsync.domain.names import fold_for_matching

__all__ = [
    "DEFAULT_MAX_TOKEN_WEIGHT",
    "DEFAULT_SMOOTHING",
    "WEIGHTS_FILE",
    "WEIGHTS_FILE_FORMAT",
    "TokenTable",
    "TokenWeights",
    "default_token_weights",
    "fold_for_matching",
    "name_tokens",
]

DEFAULT_MAX_TOKEN_WEIGHT = 10.0
DEFAULT_SMOOTHING = 0.5  # added to every count (Jeffreys prior): unseen tokens get a finite weight
WEIGHTS_FILE = "token_weights.tsv"  # in this package (pyproject's package-data)
WEIGHTS_FILE_FORMAT = 1  # raise it when the layout changes, so an old reader refuses a new file
_TABLE_COLUMNS = "token\tnames"
_TABLE_FIELD = re.compile(r"# ([a-z_]+): (\S.*)")
_TABLE_PARAMETERS = ("format", "sample", "smoothing", "max_weight")

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
        smoothing: float = DEFAULT_SMOOTHING,
    ) -> TokenWeights:
        """From ``counts[token]`` = number of names (out of ``names``) containing the token.

        Tokens are folded (counts of tokens that fold alike are added). Counts are smoothed
        by ``smoothing``, so a token seen in no name gets ``s / (names + 2 s)``.
        """
        if names <= 0:
            raise ValueError("names must be positive")
        if smoothing <= 0:
            raise ValueError("smoothing must be positive")
        folded: dict[str, float] = {}
        for token, count in counts.items():
            if count < 0:
                raise ValueError("counts must not be negative")
            key = fold_for_matching(token)
            folded[key] = folded.get(key, 0.0) + count
        denominator = names + 2 * smoothing
        probabilities = {
            token: min((count + smoothing) / denominator, 1.0)
            for token, count in folded.items()
            if token
        }
        return cls(
            MappingProxyType(probabilities),
            unknown_probability=smoothing / denominator,
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


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Token counts with what produced them: the content of ``token_weights.tsv``.

    ``counts[token]`` is how many of ``sample`` names contain the folded token; ``smoothing``
    and ``max_weight`` turn them into weights (``weights``). ``provenance`` names the
    generator and its own parameters; it is kept in the file, not interpreted.

    The text form is tab-separated, one token per line in sorted order so a regeneration
    diffs line by line, after a header of ``# key: value`` lines (any other ``#`` line is a
    comment) and the column line ``token<TAB>names``.
    """

    counts: Mapping[str, int]
    sample: int
    smoothing: float = DEFAULT_SMOOTHING
    max_weight: float = DEFAULT_MAX_TOKEN_WEIGHT
    provenance: Mapping[str, str] = field(default_factory=dict)

    def weights(self) -> TokenWeights:
        return TokenWeights.from_counts(
            self.counts, self.sample, max_weight=self.max_weight, smoothing=self.smoothing
        )

    def to_text(self) -> str:
        clash = set(self.provenance) & set(_TABLE_PARAMETERS)
        if clash:
            raise ValueError(f"provenance must not redefine {sorted(clash)}")
        for key, value in self.provenance.items():
            if not _TABLE_FIELD.fullmatch(f"# {key}: {value}"):
                raise ValueError(f"provenance {key!r}: {value!r} does not fit on a header line")
        for token, count in self.counts.items():
            if not token or token.split() != [token] or count < 0:
                raise ValueError(f"bad table row: {token!r} {count!r}")
        lines = [
            "# Name-token counts for record matching, read by popsync.identity.folding.",
            "# Generated by `python -m popsync.dev.token_weights`: do not edit by hand.",
            "# weight = min(-log2((names + smoothing) / (sample + 2 smoothing)), max_weight)",
            f"# format: {WEIGHTS_FILE_FORMAT}",
            f"# sample: {self.sample}",
            f"# smoothing: {self.smoothing!r}",
            f"# max_weight: {self.max_weight!r}",
            *(f"# {key}: {value}" for key, value in self.provenance.items()),
            _TABLE_COLUMNS,
            *(f"{token}\t{self.counts[token]}" for token in sorted(self.counts)),
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> TokenTable:
        fields: dict[str, str] = {}
        counts: dict[str, int] = {}
        lines = enumerate(text.splitlines(), 1)
        for number, line in lines:
            if line == _TABLE_COLUMNS:
                break
            if not line.startswith("#"):
                raise ValueError(f"line {number}: expected a header line or {_TABLE_COLUMNS!r}")
            if (found := _TABLE_FIELD.fullmatch(line)) is not None:
                if found[1] in fields:
                    raise ValueError(f"line {number}: {found[1]!r} given twice")
                fields[found[1]] = found[2]
        else:
            raise ValueError(f"not a token table: no column line {_TABLE_COLUMNS!r}")
        # Checked before the rows: a newer layout must fail here, not on its first row.
        if fields.get("format") != str(WEIGHTS_FILE_FORMAT):
            found_format = fields.get("format", "missing")
            raise ValueError(f"token table format {found_format}, expected {WEIGHTS_FILE_FORMAT}")
        missing = [key for key in _TABLE_PARAMETERS if key not in fields]
        if missing:
            raise ValueError(f"token table header lacks {missing}")
        for number, line in lines:
            token, _, count = line.partition("\t")
            if not token or token in counts or not (count.isascii() and count.isdigit()):
                raise ValueError(f"line {number}: expected a new token, a tab and a count")
            counts[token] = int(count)
        return cls(
            counts=MappingProxyType(counts),
            sample=int(fields["sample"]),
            smoothing=float(fields["smoothing"]),
            max_weight=float(fields["max_weight"]),
            provenance=MappingProxyType(
                {k: v for k, v in fields.items() if k not in _TABLE_PARAMETERS}
            ),
        )


@functools.cache
def default_token_weights() -> TokenWeights:
    """The packaged table (``token_weights.tsv``), read once per process.

    Names drawn from the simulator's tables: birth years and provinces spread as in the
    population, with each province's ethnic mix; every name in the simulator's pools is in
    the table (a known name), even if never drawn. ``max_weight`` for any token outside it.
    """
    resource = resources.files("popsync.identity").joinpath(WEIGHTS_FILE)
    return TokenTable.from_text(resource.read_text(encoding="utf-8")).weights()
