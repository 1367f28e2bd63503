"""``python -m bench.matching.tune``: choose thresholds on the TUNING seed (never the reported one).

Scores every record once, then searches the thresholds coordinate by coordinate (auto_link,
review, margin, repeated until nothing changes), minimizing an explicit cost:

    COST_FALSE_LINK * false automatic links + COST_REVIEW * reviewed records
    + COST_MISSED * true matches neither linked nor reviewed with the right candidate

among the settings with precision >= MIN_PRECISION and recall >= MIN_RECALL (stricter than the
targets 0.99 / 0.95, to leave room for another seed). Within COST_TOLERANCE of the least
cost of a sweep, the safer value wins (higher auto_link and margin, lower review): a margin
that costs nothing on this seed still guards against twins on the next. Prints every sweep;
writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.matching import DEFAULT_CITIZENS, DEFAULT_RECORDS, TUNING_SEED
from bench.matching.generate import generate
from bench.matching.harness import TOP_K, Core, Evaluated, core, evaluate_benchmark
from popsync.identity import MatchThresholds, decide

COST_FALSE_LINK = 50.0  # someone else's employment or insurance history merged into a citizen
COST_REVIEW = 1.0  # a clerk's look
COST_MISSED = 3.0  # reported unmatched: found later by hand, if at all
MIN_PRECISION = 0.995
MIN_RECALL = 0.97

COST_TOLERANCE = 0.01  # within 1% of the least cost, take the safer value (see _GRID)

# threshold -> (values tried, which direction is safer: fewer false links / fewer misses)
_GRID: dict[str, tuple[list[float], str]] = {
    "auto_link": ([float(v) for v in range(14, 33)], "higher"),
    "review": ([float(v) for v in range(4, 19)], "lower"),
    "margin": ([float(v) for v in range(0, 11)], "higher"),
}


def _cost(figures: Core) -> float:
    return (
        COST_FALSE_LINK * figures.false_links
        + COST_REVIEW * figures.review
        + COST_MISSED * figures.missed
    )


def _feasible(figures: Core) -> bool:
    return figures.precision >= MIN_PRECISION and figures.recall >= MIN_RECALL


def _figures(evaluated: Evaluated, thresholds: MatchThresholds) -> Core:
    decisions = [decide(e, thresholds, top_k=TOP_K) for e in evaluated.evaluations]
    return core(evaluated.benchmark.records, decisions)


def tune(evaluated: Evaluated, start: MatchThresholds) -> MatchThresholds:
    """Coordinate search from ``start``; prints every setting tried."""
    current = start
    for round_number in range(1, 6):
        before = current
        for name, (values, safer) in _GRID.items():
            print(f"\nround {round_number}, {name} (others: {current.model_dump()})")
            print(f"{name:>10} precision   recall    auto  review  false  missed    cost")
            tried: list[tuple[float, MatchThresholds, Core]] = []
            for value in values:
                try:
                    candidate = MatchThresholds(**{**current.model_dump(), name: value})
                except ValueError:  # review above auto_link
                    continue
                figures = _figures(evaluated, candidate)
                tried.append((value, candidate, figures))
            feasible = [t for t in tried if _feasible(t[2])]
            if feasible:
                least = min(_cost(t[2]) for t in feasible)
                near = [t for t in feasible if _cost(t[2]) <= least * (1 + COST_TOLERANCE)]
                current = (max if safer == "higher" else min)(near, key=lambda t: t[0])[1]
            for value, candidate, figures in tried:
                print(
                    f"{value:10.1f} {figures.precision:9.4f} {figures.recall:8.4f} "
                    f"{figures.recall_auto:7.4f} {figures.review:7d} {figures.false_links:6d} "
                    f"{figures.missed:7d} {_cost(figures):7.0f}"
                    + ("  <- chosen" if candidate == current else "")
                )
        if current == before:
            break
    best = _figures(evaluated, current)
    print(f"\nchosen on seed {evaluated.benchmark.seed}: {current.model_dump()}")
    print(f"  {best}, cost {_cost(best):.0f}")
    return current


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.matching.tune", description=__doc__)
    parser.add_argument("--seed", type=int, default=TUNING_SEED)
    parser.add_argument("--citizens", type=int, default=DEFAULT_CITIZENS)
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS)
    args = parser.parse_args(argv)
    evaluated = evaluate_benchmark(generate(args.seed, args.citizens, args.records))
    tune(evaluated, MatchThresholds())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
