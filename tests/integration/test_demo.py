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
