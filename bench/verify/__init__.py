"""The verification service under load: ``python -m bench.verify`` (``popsync bench verify``).

One run, one embedded PostgreSQL holding N synthetic citizens (1,000,000 by default), and
three contenders reading the same PINs:

- ``floor``: the same reads on the same driver (psycopg, async), no HTTP: primary-key
  SELECTs, and ``= ANY`` batches of 1,000;
- ``baseline``: a minimal FastAPI app doing only the same select and comparison
  (``baseline.py``: no auth, quota, audit, policy or metrics), on uvicorn as the service runs;
- ``service``: ``popsync serve``, the whole thing, with a partner created by its CLI.

The load comes from ``load.py`` in a process of its own (no ``wrk`` here), over loopback,
for a bounded time per point. ``harness.py`` runs them in turn and writes the figures.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "verify.json"
DEFAULT_CITIZENS = 1_000_000
DEFAULT_SEED = 2025
BATCH_ITEMS = 1000  # items per batch request, and per `= ANY` read of the floor
