"""Generate the matcher's packaged name-token table, ``popsync/identity/token_weights.tsv``.

The default token weights (``popsync.identity.folding.default_token_weights``) are measured on
names drawn from the simulator's frequency tables (``popsync.dev.simulate.names``: survey
surname shares, Văn/Thị shares by birth year, given names, the names of ethnic minorities mixed
in by province as ``popsync.dev.simulate.geography`` does), with a fixed seed, so the table is
deterministic. Production reads the file this writes and never imports the simulator.

    python -m popsync.dev.token_weights           # write the file
    python -m popsync.dev.token_weights --check   # exit 1 if it differs from a regeneration
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from popsync.dev.simulate import geography
from popsync.dev.simulate.names import (
    ETHNICITIES,
    GIVEN_NAMES,
    MIDDLE_NAMES,
    SURNAMES,
    random_name,
)
from popsync.identity.folding import (
    DEFAULT_MAX_TOKEN_WEIGHT,
    DEFAULT_SMOOTHING,
    WEIGHTS_FILE,
    TokenTable,
    name_tokens,
)

SAMPLE = 20_000
SEED = 20250701
VOCABULARY_DRAWS = 200  # per ethnicity and sex, to list the names of minorities
FIRST_BIRTH_YEAR = 1935
BIRTH_YEARS = 80  # drawn uniformly from FIRST_BIRTH_YEAR on
# The file in the source tree (the editable install reads it from there).
TABLE_PATH = Path(__file__).resolve().parents[1] / "identity" / WEIGHTS_FILE


def simulated_counts(
    sample: int, seed: int, vocabulary_draws: int = VOCABULARY_DRAWS
) -> Counter[str]:
    """How many of ``sample`` drawn names contain each folded token; every token the simulator
    can produce is present, with count 0 if it was never drawn."""
    rng = random.Random(seed)  # noqa: S311 -- a frequency table, not a secret
    counts: Counter[str] = Counter()
    for _ in range(sample):
        unit = geography.pick_unit(rng)
        ethnicity = geography.pick_ethnicity(rng, geography.current_of(unit))
        sex = "M" if rng.random() < 0.5 else "F"
        birth_year = FIRST_BIRTH_YEAR + int(rng.random() * BIRTH_YEARS)
        drawn = random_name(rng, sex, ethnicity=ethnicity, birth_year=birth_year)
        counts.update(set(name_tokens(drawn.full)[0]))
    # Every name the simulator can produce is a known name, even if too rare to be drawn.
    vocabulary = [*SURNAMES.items]
    for sex in ("M", "F"):
        vocabulary += [*MIDDLE_NAMES[sex].items, *GIVEN_NAMES[sex].items]
        for ethnicity in ETHNICITIES:
            for _ in range(vocabulary_draws):
                vocabulary.append(random_name(rng, sex, ethnicity=ethnicity).full)
    for text in vocabulary:
        for token in name_tokens(text)[0]:
            counts[token] += 0
    return counts


def generate(
    sample: int = SAMPLE, seed: int = SEED, vocabulary_draws: int = VOCABULARY_DRAWS
) -> TokenTable:
    """The table with its provenance, as the packaged file holds it."""
    return TokenTable(
        counts=dict(simulated_counts(sample, seed, vocabulary_draws)),
        sample=sample,
        smoothing=DEFAULT_SMOOTHING,
        max_weight=DEFAULT_MAX_TOKEN_WEIGHT,
        provenance={
            "generator": "python -m popsync.dev.token_weights",
            "source": "popsync.dev.simulate (names, geography)",
            "seed": str(seed),
            "birth_years": f"{FIRST_BIRTH_YEAR}-{FIRST_BIRTH_YEAR + BIRTH_YEARS - 1} uniform",
            "vocabulary_draws": f"{vocabulary_draws} per ethnicity and sex",
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m popsync.dev.token_weights", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--output", type=Path, default=TABLE_PATH, help="%(default)s")
    args = parser.parse_args(argv)
    path: Path = args.output
    text = generate().to_text()
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if args.check:
        if current != text:
            state = "is missing" if current is None else "differs from what the generator writes"
            print(f"{path} {state}: run `python -m popsync.dev.token_weights`", file=sys.stderr)
            return 1
        return 0
    if current == text:
        print(f"{path} already up to date")
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
