"""Bounded cost per citizen: ``python -m bench.refold``.

One citizen's events published in reverse legal order (every one of them lands before all
those already applied), with an unrelated citizen's event on the same partition in the
middle of them. ``harness`` applies them through the synchronizer's real step
(`SynchronizerStep`) on a real PostgreSQL state store, batch after batch as the runtime
hands them over, and times the whole and the unrelated event.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "refold.json"
DEFAULT_EVENTS = 6_000
