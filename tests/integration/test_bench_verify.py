"""`python -m bench.verify` end to end at a tiny size: a real PostgreSQL with 2,000 citizens,
the floor, the baseline and `popsync serve` under load, and the result has the figures
bench/README.md quotes. Speed is never asserted (the goals live in the benchmark's output)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from bench.verify.__main__ import main

pytestmark = pytest.mark.integration


def _point_is_whole(point: dict[str, Any], items: int) -> None:
    assert point["requests"] > 0 and point["errors"] == {} and point["disconnects"] == 0
    assert point["items_per_second"] == pytest.approx(point["requests_per_second"] * items)
    assert 0 < point["p50_ms"] <= point["p99_ms"] <= point["max_ms"]
    cpu = point["cpu"]
    assert cpu["server_us_per_request"] > 0 and cpu["postgres_us_per_item"] > 0
    assert 0 <= cpu["server_system_share"] <= 1


def test_the_harness_measures_floor_baseline_and_service(
    tmp_path: Path, server_workdir: Callable[[str], AbstractContextManager[Path]]
) -> None:
    output = tmp_path / "verify.json"
    argv = ["--citizens", "2000", "--questions", "2000", "--duration", "1", "--warmup", "0.3"]
    argv += ["--concurrency", "4", "--batch-concurrency", "1", "--workers", "1", "--no-profile"]
    argv += ["--output", str(output)]
    with server_workdir("bench-verify") as workdir:
        assert main([*argv, "--workdir", str(workdir)]) == 0
        assert json.loads((workdir / "bench-verify.json").read_text())["citizens"] == 2000

    result = json.loads(output.read_text())
    assert result["citizens"] == 2000 and result["questions"]["count"] == 2000
    floor = result["floor"]
    assert floor["pk"]["reads_per_second"] > 0 and floor["pk"]["items_per_read"] == 1
    assert floor["any"]["items_per_second"] == pytest.approx(
        floor["any"]["reads_per_second"] * 1000
    )
    # 5% of the questions name a PIN no citizen has.
    assert 0.9 < floor["pk"]["rows_found_share"] < 1.0
    assert set(result["contenders"]) == {"baseline_x1", "service"}
    for name, contender in result["contenders"].items():
        answers = contender["answers"]
        assert answers["single_agree"] == answers["batch_agree"] == answers["checked"], name
        _point_is_whole(contender["single"]["4"], 1)
        _point_is_whole(contender["batch"]["1"], 1000)
        assert contender["server_rss_mb"] > 0
    assert result["contenders"]["service"]["measured"] is True
    goals = result["goals"]["service"]
    assert goals["share_of_baseline_throughput"] > 0
    assert set(goals["share_of_baseline_by_connections"]) == {"4"}
    assert isinstance(goals["singles_3000_with_p99_under_50ms"], bool)
    assert goals["batch_share_of_floor"] > 0
    costs = result["costs_us"]
    assert all(us > 0 for us in costs.values()) and "fastapi_app_single_without_db" in costs
    split = result["cpu_split"]["service"]["single"]
    assert (
        split["cpu_us_per_item"]["server"]
        == result["contenders"]["service"]["single"]["4"]["cpu"]["server_us_per_item"]
    )
    assert result["machine"]["cores"] and result["command"].startswith("python -m bench.verify")
