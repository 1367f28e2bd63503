"""The benchmark's CPU accounting reads what the kernel counts (proc(5)), reaped children
included only when asked: PostgreSQL's backends exit with their connections."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from bench.pipeline.pipeline import process_cpu_seconds


def test_a_reaped_childs_cpu_counts_for_its_parent_only_when_asked() -> None:
    me = os.getpid()
    own, with_reaped = process_cpu_seconds(me), process_cpu_seconds(me, reaped=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)

    reaped = process_cpu_seconds(me, reaped=True) - with_reaped - (process_cpu_seconds(me) - own)
    assert child > 0.05
    assert abs(reaped - child) < 0.05  # the same kernel count, read at a tick's resolution
