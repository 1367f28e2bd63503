"""`popsync bench` end to end on a tiny stream: every contender runs on the real broker and
PostgreSQL, and the result has the figures bench/README.md quotes. Speed is never asserted here
(targets live in the benchmark's own output)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest

from bench.pipeline import pipeline
from popsync import cli
from popsync.dev.stack import EmbeddedStack

pytestmark = pytest.mark.integration


def test_the_harness_measures_every_contender_and_writes_json_and_chart(
    tmp_path: Path, server_workdir: Callable[[str], AbstractContextManager[Path]]
) -> None:
    output = tmp_path / "result.json"
    argv = ["bench", "--events", "1500", "--rates", "300", "--latency-seconds", "2"]
    argv += ["--latency-repeats", "2"]
    argv += ["--instances", "1,2", "--ceiling-events", "900", "--output", str(output)]
    with server_workdir("bench") as workdir:
        argv += ["--cache-dir", str(tmp_path / "cache"), "--workdir", str(workdir)]
        assert cli.main(argv) == 0

    result = json.loads(output.read_text())
    assert output.with_suffix(".png").stat().st_size > 10_000
    speeds = result["events_per_second"]
    assert set(speeds) == {"floor", "naive", "popsync_x1", "popsync_x2"}
    assert all(rate > 0 for rate in speeds.values())
    assert result["ratio_popsync_to_floor"] == round(speeds["popsync_x1"] / speeds["floor"], 4)
    assert result["ratio_popsync_to_naive"] == round(speeds["popsync_x1"] / speeds["naive"], 2)
    # Every contender went through the whole stream; popsync stored every expected row.
    phases = result["phases"]
    assert phases["floor"]["events"] == 1500 and result["naive_events"] == 1500
    assert phases["popsync_x2"]["history_rows"] == result["stream"]["expected_history_rows"]
    assert len(phases["popsync_x2"]["peak_rss_mb"]) == 4  # two instances of each kind
    latency = result["latency_ms"]
    assert latency["events"] == 600 and 0 < latency["measured"] <= 600
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert len(result["latency_p99_repeats_ms"]) == 2
    assert result["latency_p99_repeats_ms"][0] == latency["p99_ms"]
    assert result["total_cpu_us_per_event"] > result["popsync_cpu_us_per_event"]
    assert set(result["peak_rss_mb"]) == {"validator", "synchronizer"}
    assert result["popsync_cpu_us_per_event"] > 0
    # The broker and PostgreSQL worked for popsync (the harness's own polls left out).
    assert set(result["service_cpu_us_per_event"]) == {"broker", "postgres"}
    assert all(us > 0 for us in result["service_cpu_us_per_event"].values())
    ceiling = phases["faust_ceiling"]  # the first batch starts the clocks, the rest count
    assert 0 < ceiling["events"] < 900 and result["faust_consumption_alone"] == {
        "events_per_second": ceiling["events_per_second"],
        "cpu_us_per_event": ceiling["cpu_us_per_event"],
    }
    assert set(result["targets"]) == {
        "popsync_at_least_half_of_floor",
        "popsync_at_least_5x_naive",
        "p99_below_500ms",
        "worker_rss_below_300mb",
        "popsync_at_least_20pct_of_floor",
        "popsync_at_least_6x_naive",
        "total_cpu_at_most_200us_per_event",
        "p99_below_500ms_in_every_repeat",
    }


def test_a_phase_refuses_a_pipeline_that_an_earlier_phase_wrote(stack: EmbeddedStack) -> None:
    settings = stack.isolated_settings("bench-again", topics={"registry_events": "bench-raw"})
    stack.prepare(settings)
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        conn.execute(
            "INSERT INTO citizen_history (pin, version, event_id, event_type, source_registry,"
            " changed_fields, changes, occurred_at, applied_at)"
            " VALUES ('079000000001', 1, 'e1', 'BIRTH_REGISTERED', 'CIVIL_STATUS', '{}', '{}',"
            " now(), now())"
        )
    started = len(stack.workers)
    with pytest.raises(pipeline.BenchFailed, match="1 history rows of an earlier phase"):
        pipeline.throughput(stack, "bench-again", "bench-raw", 1, instances=1, timeout=60)
    assert len(stack.workers) == started  # refused before any worker started
