"""Labelled benchmark of record matching (``popsync.identity``): ``python -m bench.matching``.

``generate`` builds a seeded population and noisy sector records with their true PIN;
``harness`` runs the matcher and measures precision, recall and the review band; ``tune``
searches thresholds on the tuning seed (never on the reported one).
"""

from pathlib import Path

DEFAULT_SEED = 2025  # the reported run
TUNING_SEED = 7  # thresholds are chosen on this seed only
DEFAULT_CITIZENS = 50_000
DEFAULT_RECORDS = 10_000
RESULTS = Path(__file__).resolve().parents[1] / "results" / "matching.json"
