"""`popsync publish` on a hostile file, through the real CLI to the real broker: every bad
line is reported with its number and code, every good line arrives, the exit code says
"some lines refused"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from popsync.adapters.kafka.reader import read_to_end
from popsync.contract.json_form import event_to_json
from popsync.dev.stack import EmbeddedStack, settings_env
from popsync.ops.provision import provision
from popsync.ops.publish import EVENT_CODEC, MAX_LINE_BYTES
from popsync.settings import Settings
from popsync.topology import MAX_EVENT_BYTES
from tests.builders import PIN, birth_event


@pytest.fixture
def topics_factory(stack: EmbeddedStack) -> Callable[[str], Settings]:
    """Settings with topics of their own, named `name`, provisioned."""

    def make(name: str) -> Settings:
        settings = stack.isolated_settings(name)
        provision(settings)
        return settings

    return make


def publish(settings: Settings, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("POPSYNC_")}
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "popsync", "publish", "--source", "civil-status", str(path)],
        env={**env, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def good(n: int) -> bytes:
    event = birth_event(event_id=f"2f1c7a52-0000-4000-8000-{n:012d}", source_sequence=n)
    return json.dumps(event_to_json(event), ensure_ascii=False).encode()


def test_a_hostile_file_publishes_its_good_lines_and_names_each_bad_one(
    topics_factory: Callable[[str], Settings], tmp_path: Path
) -> None:
    topics = topics_factory("publish_hostile")
    sequence = good(2).replace(
        b'"source_sequence": 2', b'"source_sequence": ' + str(2**70).encode()
    )
    lines = [
        b"\xef\xbb\xbf" + good(1),  # 1: BOM, accepted on line 1
        bytes(b for b in range(1, 256) if b != ord("\n")),  # 2: 0x80 is its 127th byte
        b"[" * 200_000 + b"]" * 200_000,  # 3
        sequence,  # 4
        good(3).replace(b'"source_sequence": 3', b'"source_sequence": NaN'),  # 5
        good(4),  # 6
        b"x" * (MAX_LINE_BYTES + 10),  # 7: refused unread
        json.dumps(
            {**event_to_json(birth_event()), "correlation_id": "c" * MAX_EVENT_BYTES}
        ).encode(),  # 8
        good(5),  # 9
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = publish(topics, path)

    assert result.returncode == 1
    assert result.stdout.strip() == "published 3 events, 6 bad lines"
    reported = result.stderr.splitlines()
    assert reported[:5] == [
        f"{path}:2: NOT_UTF8: line is not valid UTF-8 (byte 127)",
        f"{path}:3: TOO_DEEP: JSON nested deeper than 32 levels",
        f"{path}:4: NUMBER_OUT_OF_RANGE: an integer is outside the Avro long range",
        f"{path}:5: NOT_FINITE: NaN is not a JSON number",
        f"{path}:7: LINE_TOO_LONG: line is longer than {MAX_LINE_BYTES} bytes",
    ]
    assert len(reported) == 6 and reported[5].startswith(f"{path}:8: EVENT_TOO_LARGE: ")
    assert PIN not in result.stderr

    arrived = [
        value for _, _, value in read_to_end(topics.kafka, topics.topics.registry_events, 30)
    ]
    assert sorted(EVENT_CODEC.decode(v).source_sequence for v in arrived) == [1, 4, 5]


def test_a_clean_file_exits_0(topics_factory: Callable[[str], Settings], tmp_path: Path) -> None:
    topics = topics_factory("publish_clean")
    path = tmp_path / "clean.jsonl"
    path.write_bytes(good(6) + b"\r\n" + good(7) + b"\r\n\r\n")
    result = publish(topics, path)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (
        0,
        "published 2 events, 0 bad lines",
        "",
    )
