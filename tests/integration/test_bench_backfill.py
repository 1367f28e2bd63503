"""`python -m bench.backfill` end to end at a tiny size: three copies of a simulated block as
signed archives, the floor and `popsync backfill` on a real PostgreSQL, and the result has
the figures bench/README.md quotes. Speed is never asserted (the goals live in the
benchmark's output); that the store holds what the rules accept is."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from bench.backfill.__main__ import main

pytestmark = pytest.mark.integration


def test_the_harness_measures_the_floor_and_the_backfill_on_the_same_archives(
    tmp_path: Path, server_workdir: Callable[[str], AbstractContextManager[Path]]
) -> None:
    output = tmp_path / "backfill.json"
    argv = ["--events", "1500", "--base-events", "600", "--seed", "7"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    with server_workdir("bench-backfill") as workdir:
        assert main([*argv, "--workdir", str(workdir)]) == 0

    result = json.loads(output.read_text())
    assert result["events"] == 1500 and result["archive"]["copies"] == 3
    assert result["command"].startswith("python -m bench.backfill --events 1500")
    speeds = result["events_per_second"]
    assert speeds["floor"] > 0 and speeds["backfill"] > 0
    assert result["ratio_backfill_to_floor"] == round(speeds["backfill"] / speeds["floor"], 4)
    assert result["floor"]["events"] == 1500
    backfill = result["backfill"]
    assert backfill["report"]["records"] == 1500
    assert backfill["wall_seconds"] == result["backfill_seconds"] > 0
    assert result["peak_rss_mb"] >= backfill["peak_rss_mb"] > 0
    assert backfill["cpu_us_per_event"] > 0 and backfill["postgres_cpu_us_per_event"] > 0
    # The copies are distinct citizens: the store holds every history row and citizen the
    # rules accept, and the backfill parked exactly the invalid records.
    assert all(result["agreement"].values()), result["agreement"]
    assert backfill["store"]["citizen_history"] == result["expected"]["history_rows"]
    assert result["ten_million_events_seconds"] is None
    assert result["ten_million_events_seconds_extrapolated"] == round(
        10_000_000 / speeds["backfill"], 1
    )
    assert "EXTRAPOLATED" in result["ten_million_basis"]
    assert set(result["goals"]) == {
        "backfill_at_least_half_of_floor",
        "ten_million_under_10_min",
        "rss_below_1gb",
    }
