"""The verification benchmark's load generator reads answers by their Content-Length, however
the bytes arrive, counts only what the window holds, and keeps refusals apart; its profile
summary and percentiles say what they claim."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.verify.load import Spec, build_spec, drive
from bench.verify.sampling import difference, summarize
from bench.verify.stats import latency_summary, percentile


async def _serve(statuses: list[int], split: bool) -> asyncio.Server:
    """A keep-alive HTTP/1.1 server answering each request with the next status, its
    answer written in two pieces a moment apart when `split`."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                status = statuses[answered % len(statuses)]
                answered += 1
                body = b'{"attributes":{"full_name":"match"},"alive":true}'
                answer = (
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                if split:
                    writer.write(answer[:20])
                    await writer.drain()
                    await asyncio.sleep(0.001)
                    writer.write(answer[20:])
                else:
                    writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _spec(port: int, connections: int = 3) -> Spec:
    bodies = [json.dumps({"pin": f"0791900000{n:02d}"}).encode() for n in range(10)]
    return Spec(port, "/v1/verify", bodies, 1, connections, warmup=0.1, duration=0.5)


async def _drive(statuses: list[int], split: bool) -> dict[str, object]:
    server = await _serve(statuses, split)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await drive(_spec(port), announce=False)


@pytest.mark.parametrize("split", [False, True])
def test_answers_are_read_whole_and_counted_in_the_window(split: bool) -> None:
    result = asyncio.run(_drive([200], split))
    assert isinstance(result["requests"], int) and result["requests"] > 10
    assert result["errors"] == {} and result["disconnects"] == 0
    assert result["requests_per_second"] == round(result["requests"] / 0.5, 1)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]  # type: ignore[operator]


def test_refusals_are_counted_apart_from_answers() -> None:
    result = asyncio.run(_drive([200, 200, 503], split=False))
    errors = result["errors"]
    assert isinstance(errors, dict) and set(errors) == {"503"}
    assert isinstance(result["requests"], int)
    assert abs(errors["503"] * 2 - result["requests"]) <= 6  # one in three, per connection


def test_batches_are_cut_from_the_questions(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(f'{{"pin":"{n}"}}\n' for n in range(25)))
    spec = build_spec(
        {"questions": str(questions), "items_per_request": 10, "port": 1, "path": "/b"}
        | {"connections": 1, "warmup": 0, "duration": 1}
    )
    assert len(spec.bodies) == 2  # whole batches only
    assert json.loads(spec.bodies[1])["items"][0] == {"pin": "10"}
    request = spec.requests()[0]
    head, body = request.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert latency_summary([0.001, 0.002]) == {
        "p50_ms": 1.0,
        "p90_ms": 2.0,
        "p99_ms": 2.0,
        "max_ms": 2.0,
    }


def test_a_profile_counts_innermost_frames_and_project_frames_below_the_loop() -> None:
    raw = "\n".join(
        [
            "<module> (bench/verify/baseline.py:1);Runner.run (asyncio/runners.py:118) 5",
            "<module> (bench/verify/baseline.py:1);Runner.run (asyncio/runners.py:118);"
            "verify (bench/verify/baseline.py:80);read_citizen (popsync/adapters/postgres/"
            "partners.py:9);BaseCursor._send_query_prepared (psycopg/_cursor_base.py:1) 15",
        ]
    )
    summary = summarize(raw)
    assert summary["samples"] == 20
    assert summary["by_package"]["psycopg"] == 0.75
    assert sum(summary["by_package"].values()) == pytest.approx(1.0)
    assert summary["top_project"] == {
        "verify (bench/verify/baseline.py)": 0.75,
        "read_citizen (popsync/adapters/postgres/partners.py)": 0.75,
    }


def test_the_service_is_compared_with_the_baseline_package_by_package() -> None:
    def sampled(us: float, by_package: dict[str, float]) -> dict[str, object]:
        return {"server_us_per_item_while_sampled": us, "by_package_us_per_item": by_package}

    service = {"single": sampled(400, {"psycopg": 150, "services.verification": 50})}
    baseline = {"single": sampled(320, {"psycopg": 130, "fastapi": 30.5})}
    assert difference(service, baseline) == {
        "single": {"all": 80, "services.verification": 50, "fastapi": -30.5, "psycopg": 20}
    }
    assert difference(None, baseline) == {}
