"""A picture of what operators see, drawn from a real run's metrics in Prometheus.

`popsync demo --metrics-plot FILE.png` queries the Prometheus that scraped the demo
over the run and draws throughput, consumer lag and batch duration per worker.
matplotlib is imported here only (extra `plot`, part of `dev`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# One window for every rate: a few 1 s scrapes, so short demo runs still show a curve.
_WINDOW = "5s"
PANELS: Mapping[str, Mapping[str, str]] = {
    "events/s consumed, by worker": {
        "{worker}": f"sum by (worker) (rate(popsync_events_consumed_total[{_WINDOW}]))",
    },
    "consumer lag (messages), by worker": {
        "{worker}": "sum by (worker) (popsync_consumer_lag_messages)",
    },
    # Not event-to-store latency: the simulated stream is a backfill whose recorded_at
    # lies years back, so that histogram only shows its top bucket here.
    "batch duration p99 (s), by worker": {
        "{worker}": "histogram_quantile(0.99, sum by (worker, le) "
        f"(rate(popsync_batch_duration_seconds_bucket[{_WINDOW}])))",
    },
}


class RangeQuerier(Protocol):
    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (seconds since start, value)


def collect(prometheus: RangeQuerier, start: float, end: float) -> dict[str, list[Series]]:
    """Every panel's series over [start, end], times relative to `start`."""
    panels: dict[str, list[Series]] = {}
    for title, queries in PANELS.items():
        found: list[Series] = []
        for label, promql in queries.items():
            for result in prometheus.query_range(promql, start, end):
                points = [
                    (float(t) - start, float(v))
                    for t, v in result["values"]
                    if v not in ("NaN", "+Inf", "-Inf")
                ]
                found.append(Series(label.format(**result["metric"]), points))
        panels[title] = found
    return panels


def draw(panels: Mapping[str, Sequence[Series]], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True)
    for axis, (title, series) in zip(axes, panels.items(), strict=True):
        for one in sorted(series, key=lambda s: s.label):
            axis.plot([t for t, _ in one.points], [v for _, v in one.points], label=one.label)
        axis.set_title(title, fontsize=10, loc="left")
        axis.grid(alpha=0.3)
        if series:
            axis.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds since the stream started")
    figure.suptitle(f"popsync demo, from Prometheus: {subtitle}", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
