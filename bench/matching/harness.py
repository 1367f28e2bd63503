"""Run the matcher on a labelled benchmark and measure it.

Definitions (a "true match" is a record whose person is in the population):

* ``precision``: automatic links (LINKED) to the right citizen / all automatic links.
* ``recall``: true matches either LINKED to the right citizen or sent to REVIEW with the
  right citizen among the candidates shown to the reviewer / all true matches.
* ``recall_auto``: true matches LINKED to the right citizen / all true matches.
* ``review_band_size``: records sent to REVIEW (``review_band_share``: of all records).
* ``blocking.recall``: true matches whose citizen was among the scored candidates.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.matching.generate import Benchmark, LabelledRecord, generate
from popsync.identity import (
    CitizenIndex,
    Evaluation,
    MatchDecision,
    MatchOutcome,
    MatchThresholds,
    decide,
)

__all__ = ["Core", "Evaluated", "core", "evaluate_benchmark", "measure", "run"]

TOP_K = 3  # candidates shown to a reviewer


@dataclass(frozen=True, slots=True)
class Evaluated:
    """A benchmark with every record's candidates scored (thresholds not yet applied)."""

    benchmark: Benchmark
    evaluations: tuple[Evaluation, ...]
    index_seconds: float
    evaluate_seconds: float


def evaluate_benchmark(benchmark: Benchmark) -> Evaluated:
    started = time.perf_counter()
    index = CitizenIndex(benchmark.citizens())
    indexed = time.perf_counter()
    evaluations = tuple(index.evaluate(item.record) for item in benchmark.records)
    return Evaluated(benchmark, evaluations, indexed - started, time.perf_counter() - indexed)


def _ratio(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 6) if denominator else 1.0


def _recovered(item: LabelledRecord, decision: MatchDecision) -> bool:
    if item.true_pin is None:
        return False
    if decision.outcome is MatchOutcome.LINKED:
        return decision.pin == item.true_pin
    if decision.outcome is MatchOutcome.REVIEW:
        return any(c.pin == item.true_pin for c in decision.candidates)
    return False


def _linked_right(item: LabelledRecord, decision: MatchDecision) -> bool:
    return decision.outcome is MatchOutcome.LINKED and decision.pin == item.true_pin


@dataclass(frozen=True, slots=True)
class Core:
    """The headline figures."""

    precision: float
    recall: float
    recall_auto: float
    review: int
    false_links: int
    missed: int  # true matches neither linked right nor reviewed with the right candidate


def core(records: Sequence[LabelledRecord], decisions: Sequence[MatchDecision]) -> Core:
    true_matches = [i for i, item in enumerate(records) if item.true_pin is not None]
    linked = [i for i, d in enumerate(decisions) if d.outcome is MatchOutcome.LINKED]
    linked_right = sum(_linked_right(records[i], decisions[i]) for i in linked)
    recovered = sum(_recovered(records[i], decisions[i]) for i in true_matches)
    return Core(
        precision=_ratio(linked_right, len(linked)),
        recall=_ratio(recovered, len(true_matches)),
        recall_auto=_ratio(linked_right, len(true_matches)),
        review=sum(d.outcome is MatchOutcome.REVIEW for d in decisions),
        false_links=len(linked) - linked_right,
        missed=len(true_matches) - recovered,
    )


def measure(
    records: Sequence[LabelledRecord], decisions: Sequence[MatchDecision]
) -> dict[str, object]:
    """Precision, recall, review band and their breakdowns (no timings)."""
    true_matches = [i for i, item in enumerate(records) if item.true_pin is not None]
    linked = [i for i, d in enumerate(decisions) if d.outcome is MatchOutcome.LINKED]
    linked_right = sum(_linked_right(records[i], decisions[i]) for i in linked)
    recovered = sum(_recovered(records[i], decisions[i]) for i in true_matches)
    review = sum(d.outcome is MatchOutcome.REVIEW for d in decisions)
    false_links = [i for i in linked if decisions[i].pin != records[i].true_pin]

    by_noise: dict[str, dict[str, float]] = {}
    tags = sorted({tag for i in true_matches for tag in records[i].noise})
    for tag in ["none", *tags]:
        rows = [i for i in true_matches if tag in (records[i].noise or ("none",))]
        by_noise[tag] = {
            "records": len(rows),
            "recall": _ratio(sum(_recovered(records[i], decisions[i]) for i in rows), len(rows)),
            "recall_auto": _ratio(
                sum(_linked_right(records[i], decisions[i]) for i in rows), len(rows)
            ),
        }
    by_person: dict[str, dict[str, float]] = {}
    rows_set = set(true_matches)
    for tag in ("twin", "namesake", "renamed"):  # records about citizens who are ...
        rows = [i for i in true_matches if tag in records[i].person_tags]
        by_person[tag] = {
            "records": len(rows),
            "recall": _ratio(sum(_recovered(records[i], decisions[i]) for i in rows), len(rows)),
            "recall_auto": _ratio(
                sum(_linked_right(records[i], decisions[i]) for i in rows), len(rows)
            ),
            "linked_to_another_citizen": sum(
                1 for i in false_links if i in rows_set and tag in records[i].person_tags
            ),
        }
    non_matches: dict[str, dict[str, int]] = {}
    for i, item in enumerate(records):
        if item.true_pin is None:
            row = non_matches.setdefault(
                item.kind, {"records": 0, "LINKED": 0, "REVIEW": 0, "UNMATCHED": 0}
            )
            row["records"] += 1
            row[decisions[i].outcome.value] += 1
    outcomes = Counter(d.outcome.value for d in decisions)
    methods = Counter(d.method.value for d in decisions if d.outcome is MatchOutcome.LINKED)
    reasons = Counter(d.reason for d in decisions)
    return {
        "precision": _ratio(linked_right, len(linked)),
        "recall": _ratio(recovered, len(true_matches)),
        "recall_auto": _ratio(linked_right, len(true_matches)),
        "review_band_size": review,
        "review_band_share": _ratio(review, len(records)),
        "true_matches": len(true_matches),
        "true_non_matches": len(records) - len(true_matches),
        "outcomes": {o.value: outcomes.get(o.value, 0) for o in MatchOutcome},
        "linked_by_method": dict(sorted(methods.items())),
        "reasons": dict(sorted(reasons.items())),
        "false_links": {
            "total": len(false_links),
            "to_another_citizen": sum(1 for i in false_links if records[i].true_pin is not None),
            "of_absent_person": sum(1 for i in false_links if records[i].true_pin is None),
        },
        "true_matches_missed": {
            "review_without_true_candidate": sum(
                1
                for i in true_matches
                if decisions[i].outcome is MatchOutcome.REVIEW
                and not _recovered(records[i], decisions[i])
            ),
            "unmatched": sum(
                1 for i in true_matches if decisions[i].outcome is MatchOutcome.UNMATCHED
            ),
        },
        "non_matches": dict(sorted(non_matches.items())),
        "by_noise": by_noise,
        "by_person": by_person,
    }


def run(
    *,
    seed: int,
    citizens: int,
    records: int,
    thresholds: MatchThresholds,
    non_match_share: float = 0.10,
) -> dict[str, object]:
    """Generate, index, match and measure; the figures written to ``matching.json``."""
    started = time.perf_counter()
    benchmark = generate(seed, citizens, records, non_match_share=non_match_share)
    generated = time.perf_counter() - started
    evaluated = evaluate_benchmark(benchmark)
    decide_started = time.perf_counter()
    decisions = [decide(e, thresholds, top_k=TOP_K) for e in evaluated.evaluations]
    decide_seconds = time.perf_counter() - decide_started
    match_seconds = evaluated.evaluate_seconds + decide_seconds

    true_rows = [
        (item, e)
        for item, e in zip(benchmark.records, evaluated.evaluations, strict=True)
        if item.true_pin is not None
    ]
    blocked = sum(any(s.pin == item.true_pin for s in e.scored) for item, e in true_rows)
    sizes = [len(e.scored) for e in evaluated.evaluations]
    metrics = measure(benchmark.records, decisions)
    return {
        "benchmark": "matching",
        "command": "python -m bench.matching",
        "seed": seed,
        "citizens": citizens,
        "records": records,
        "non_match_share": non_match_share,
        "thresholds": thresholds.model_dump(),
        "review_candidates_shown": TOP_K,
        **metrics,
        "blocking": {
            "recall": _ratio(blocked, len(true_rows)),
            "mean_candidates": round(sum(sizes) / len(sizes), 3),
            "max_candidates": max(sizes),
        },
        "timing": {
            "generate_seconds": round(generated, 3),
            "index_seconds": round(evaluated.index_seconds, 3),
            "match_seconds": round(match_seconds, 3),
            "records_per_second": round(records / match_seconds, 1),
            "citizens_indexed_per_second": round(citizens / evaluated.index_seconds, 1),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
