"""Fast integer draws for the simulator's hot loops.

`random.randint`/`randrange` go through several Python-level calls each; the
simulator makes hundreds of thousands of draws, so a single multiply on `random()` (exactly
uniform enough for simulation, still fully determined by the seed) is worth having.
"""

from __future__ import annotations

import random

__all__ = ["below", "between_ints"]


def below(rng: random.Random, n: int) -> int:
    """An integer in [0, n); n must be positive."""
    return int(rng.random() * n)


def between_ints(rng: random.Random, low: int, high: int) -> int:
    """An integer in [low, high], both ends included."""
    return low + int(rng.random() * (high - low + 1))
