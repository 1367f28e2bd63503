"""Where a request's CPU time goes: the pieces timed alone, and the split of each contender's
measured CPU per request.

Timed in the harness's process, in CPU time (the least of 3 runs, as the other benches do):

- the pydantic pieces of one verification: reading the request body
  (`VerifyRequest.model_validate_json`), `compare`, writing the answer as FastAPI does
  (the response model's validation, its dump, `json.dumps`);
- the baseline's FastAPI app called directly as ASGI, with the citizens in memory
  (`baseline.build_app` on a dict): routing, the body read, validation, the comparison,
  the answer, with no server, no socket and no database.

`split` then divides the server's measured CPU per request at each contender's best
point: the app alone, the driver's share (the floor's client CPU per read), and the rest
(uvicorn, httptools, the event loop, the pool; for the service also what the baseline does
not do), beside PostgreSQL's and the load generator's share of the 2 cores.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import uvloop
from fastapi import FastAPI
from pydantic import TypeAdapter

from bench.verify import BATCH_ITEMS
from bench.verify.baseline import build_app
from popsync.verification.comparison import CitizenRecord, compare
from popsync.verification.models import VerifyAnswer, VerifyRequest

_REPEAT = 3
_ANSWER = TypeAdapter(VerifyAnswer)


class _MemoryStore:
    def __init__(self, records: dict[str, CitizenRecord]) -> None:
        self._records = records

    async def one(self, pin: str) -> CitizenRecord | None:
        return self._records.get(pin)

    async def many(self, pins: list[str]) -> dict[str, CitizenRecord]:
        return {pin: record for pin in pins if (record := self._records.get(pin)) is not None}


def _record(question: dict[str, str]) -> CitizenRecord:
    """A citizen as the question describes them (so most comparisons go all the way)."""
    pin = question["pin"]
    sex = "M" if pin[3] in "024" else "F"
    born = datetime.date.fromisoformat(question["birth_date"])
    return CitizenRecord(
        pin, question["full_name"], born, sex, "ALIVE", None, "VN", "Kinh", pin[1:3],
        "SINGLE", pin[1:3], "01001", None, None, pin,
    )  # fmt: skip


def _cpu_us(work: Callable[[], int]) -> float:
    """CPU µs per unit of `work` (which returns how many units it did), least of 3 runs."""
    best = float("inf")
    for _ in range(_REPEAT):
        started = time.process_time()
        units = work()
        best = min(best, (time.process_time() - started) * 1e6 / max(units, 1))
    return round(best, 2)


def _asgi_calls(app: FastAPI, path: str, bodies: list[bytes]) -> int:
    """Call `app` once per body, as uvicorn would after parsing the request; the count
    answered 200 (anything else is a bug of the harness)."""
    answered = 0

    async def calls() -> None:
        nonlocal answered
        for body in bodies:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [
                    (b"host", b"127.0.0.1"),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8080),
                "state": {},
            }
            message = {"type": "http.request", "body": body, "more_body": False}

            async def receive(message: dict[str, Any] = message) -> dict[str, Any]:
                return message

            async def send(sent: MutableMapping[str, Any]) -> None:
                nonlocal answered
                if sent["type"] == "http.response.start" and sent["status"] == 200:
                    answered += 1

            await app(scope, receive, send)

    uvloop.run(calls())
    return answered


def measure(questions: list[dict[str, str]]) -> dict[str, float]:
    """CPU µs of each piece, per verification."""
    records = {q["pin"]: _record(q) for q in questions}
    bodies = [json.dumps(q, ensure_ascii=False).encode() for q in questions]
    requests = [VerifyRequest.model_validate_json(body) for body in bodies]
    answers = [compare(r, records[r.pin])[0] for r in requests]
    app = build_app(_MemoryStore(records))
    batches = [
        ('{"items":[' + ",".join(b.decode() for b in bodies[i : i + BATCH_ITEMS]) + "]}").encode()
        for i in range(0, len(bodies) - BATCH_ITEMS + 1, BATCH_ITEMS)
    ]

    def parse() -> int:
        for body in bodies:
            VerifyRequest.model_validate_json(body)
        return len(bodies)

    def comparisons() -> int:
        for request in requests:
            compare(request, records[request.pin])
        return len(requests)

    def answer_json() -> int:
        for answer in answers:
            content = _ANSWER.dump_python(_ANSWER.validate_python(answer), mode="json")
            json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return len(answers)

    def app_single() -> int:
        return _asgi_calls(app, "/v1/verify", bodies)

    def app_batch() -> int:
        return _asgi_calls(app, "/v1/verify/batch", batches) * BATCH_ITEMS

    costs = {
        "request_json_to_model": _cpu_us(parse),
        "compare": _cpu_us(comparisons),
        "answer_to_json": _cpu_us(answer_json),
        "fastapi_app_single_without_db": _cpu_us(app_single),
    }
    if batches:
        costs["fastapi_app_batch_without_db_per_item"] = _cpu_us(app_batch)
    return costs


def split(result: dict[str, Any]) -> dict[str, Any]:
    """The split of each contender's CPU per request at its best point (single and batch)."""
    costs = result["costs_us"]
    floor = result["floor"]
    cores = result.get("machine", {}).get("cores") or 2
    contenders = result["contenders"]
    baseline = next((c for n, c in contenders.items() if n.startswith("baseline")), None)
    split: dict[str, Any] = {}
    for name, contender in contenders.items():
        if not contender.get("measured", True):
            continue
        entry: dict[str, Any] = {}
        for kind, app_key, driver in (
            ("single", "fastapi_app_single_without_db", floor["pk"]["client_cpu_us_per_item"]),
            (
                "batch",
                "fastapi_app_batch_without_db_per_item",
                floor["any"]["client_cpu_us_per_item"],
            ),
        ):
            points = [p for p in contender[kind].values() if p["requests"] > 0]
            if not points or app_key not in costs:
                continue
            best = max(points, key=lambda p: p["items_per_second"])
            cpu = best["cpu"]
            server = cpu["server_us_per_item"]
            load = cpu["load_us_per_request"] / best["items_per_request"]
            everything = server + cpu["postgres_us_per_item"] + load
            part: dict[str, Any] = {
                "at_connections": best["connections"],
                "items_per_second": best["items_per_second"],
                "cores_busy": cpu["cores_busy"],
                "cpu_us_per_item": {
                    "server": server,
                    "postgres": cpu["postgres_us_per_item"],
                    "load_generator": round(load, 2),
                    "all": round(everything, 2),
                },
                # The server's processes are at most `workers` cores: the service and the
                # one-worker baseline cannot use the second one.
                "server_cores": cpu["server_cores"],
                "items_per_second_if_machine_bound": round(cores * 1e6 / everything),
                "server_us_per_item_split": {
                    "fastapi_app_without_db": costs[app_key],
                    "driver_reads": driver,
                    "rest": round(server - costs[app_key] - driver, 2),
                },
            }
            if name == "service" and baseline is not None:
                same = baseline[kind].get(str(best["connections"]))
                if same is not None and same["requests"] > 0:
                    part["server_us_per_item_over_baseline"] = round(
                        server - same["cpu"]["server_us_per_item"], 2
                    )
                    part["postgres_us_per_item_over_baseline"] = round(
                        cpu["postgres_us_per_item"] - same["cpu"]["postgres_us_per_item"], 2
                    )
            entry[kind] = part
        split[name] = entry
    return split
