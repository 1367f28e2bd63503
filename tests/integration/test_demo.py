"""`popsync demo` as a person runs it: it converges, and leaves nothing behind unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_small_demo_converges_and_removes_its_temp_dir(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"  # the demo's temp dirs go here, so "nothing left" is exact
    temp.mkdir()
    done = subprocess.run(  # noqa: S603 - our own CLI, fixed argv
        [sys.executable, "-m", "popsync.cli", "demo", "--citizens", "30", "--timeout", "120"],
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "store = reference fold  30 of 30 citizens" in done.stdout
    assert "data and logs removed" in done.stdout
    assert list(temp.iterdir()) == []


def test_demo_serve_prints_what_verifies_one_of_its_citizens(tmp_path: Path) -> None:
    """The README's read-path walk-through: `demo --serve`, the printed exports, `partners
    add`, the printed curl's request, then Ctrl-C."""
    import re
    import shlex
    import signal
    import time

    import httpx

    from popsync.dev.stack import free_port

    port = free_port()
    demo = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "popsync.cli", "demo", "--citizens", "30", "--serve", str(port)],
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any("popsync audit citizen" in x for x in lines):
        line = demo.stdout.readline()
        if not line and demo.poll() is not None:
            break
        lines.append(line)
    printed = "".join(lines)
    try:
        exports = dict(re.findall(r"^  export (POPSYNC_\w+)=(.*)$", printed, re.MULTILINE))
        env = {k: shlex.split(v)[0] for k, v in exports.items()}
        assert set(env) == {"POPSYNC_POSTGRES__DSN", "POPSYNC_SERVE__AUDIT_KEY"}, printed
        add = re.search(r"KEY=\$\((popsync partners add [^|]+) \|", printed)
        assert add, printed
        added = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "popsync.cli", *shlex.split(add.group(1))[1:]],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        key = re.search(r"^api key: (\S+)$", added.stdout, re.MULTILINE)
        assert key, added.stdout + added.stderr
        body = re.search(r"-d '(\{.*\})'$", printed, re.MULTILINE)
        assert body, printed
        url = f"http://127.0.0.1:{port}/v1/verify"
        headers = {"Authorization": f"Bearer {key.group(1)}", "X-Purpose": "KYC"}

        def answer() -> httpx.Response:
            return httpx.post(url, content=body.group(1).encode(), headers=headers, timeout=10)

        for _ in range(50):  # the new partner is in force within the refresh (1 s)
            verified = answer()
            if verified.status_code != 401:
                break
            time.sleep(0.2)
        assert verified.status_code == 200, verified.text
        assert verified.json() == {
            "attributes": {"full_name": "match", "birth_date": "match"},
            "alive": True,
        }
    finally:
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, rest[-3000:]
    assert "stopping the service" in rest
