"""Backfill benchmark: ``python -m bench.backfill`` (``popsync bench backfill``).

One run, one machine, one embedded stack: ``archive`` makes N events as signed Avro
container files (one per registry) once and keeps them; ``floor`` reads the same files with
fastavro and COPYs the decoded rows; ``run`` times ``popsync backfill`` on them as a process
of its own (wall time, peak RSS, CPU, PostgreSQL's CPU) and writes the result.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "backfill.json"
DEFAULT_EVENTS = 10_000_000
DEFAULT_SEED = 2025
