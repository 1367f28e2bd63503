"""The README's metrics picture: queries per panel, and a real PNG drawn from them."""

from __future__ import annotations

from pathlib import Path

from popsync.dev import metrics_plot
from tests.fakes import FakePrometheus


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
