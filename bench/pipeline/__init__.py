"""End-to-end throughput benchmark: ``popsync bench`` (or ``python -m bench.pipeline``).

One run, one machine, one embedded broker and PostgreSQL, one generated stream:
``dataset`` generates and publishes the events once; ``floor`` reads them with
confluent-kafka, decodes with fastavro and COPYs the rows; ``naive`` is a plain faust
agent handling one event at a time; ``pipeline`` runs popsync's own workers (1 and 2
instances of each) and measures event-time-to-store latency at a fixed rate; ``report``
writes the JSON and the chart.
"""

from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
DEFAULT_EVENTS = 1_000_000
DEFAULT_SEED = 2025
