"""The README's metrics picture: queries per panel, and a real PNG drawn from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from popsync.dev import metrics_plot


class FakePrometheus:
    """For this unit test only: answers every range query with one series per worker."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        self.queries.append(promql)
        values = [[start + i, str(i * 10.0)] for i in range(5)] + [[start + 5, "NaN"]]
        return [{"metric": {"worker": "validator"}, "values": values}]


def test_every_panel_is_queried_and_drawn(tmp_path: Path) -> None:
    fake = FakePrometheus()
    panels = metrics_plot.collect(fake, start=1000.0, end=1010.0)
    assert len(fake.queries) == 3  # throughput, lag, batch duration
    assert all("popsync_" in q for q in fake.queries)
    throughput = panels["events/s consumed, by worker"][0]
    assert throughput.label == "validator"
    assert throughput.points[:2] == [(0.0, 0.0), (1.0, 10.0)]
    assert len(throughput.points) == 5  # NaN (no data in the window) is left out
    path = tmp_path / "metrics.png"
    metrics_plot.draw(panels, path, "test")
    assert path.read_bytes().startswith(b"\x89PNG")
