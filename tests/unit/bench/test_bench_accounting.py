"""The benchmark's CPU accounting reads what the kernel counts (proc(5)), reaped children
included only when asked: PostgreSQL's backends exit with their connections."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from bench.pipeline.pipeline import BenchFailed, process_cpu_seconds, tree_cpu_seconds

BURN = [sys.executable, "-c", "sum(i * i for i in range(3_000_000))"]


def test_a_reaped_childs_cpu_counts_for_its_parent_only_when_asked() -> None:
    me = os.getpid()
    own, with_reaped = process_cpu_seconds(me), process_cpu_seconds(me, reaped=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(BURN, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)

    reaped = process_cpu_seconds(me, reaped=True) - with_reaped - (process_cpu_seconds(me) - own)
    assert child > 0.05
    assert abs(reaped - child) < 0.05  # the same kernel count, read at a tick's resolution


def reaped_child() -> int:
    """The pid of a child that has used some CPU, exited and been waited for."""
    child = subprocess.Popen(BURN)
    assert child.wait() == 0
    return child.pid


def test_a_child_that_exits_while_the_tree_is_read_counts_once() -> None:
    # Listed alive, then gone before it was read: its time is in the parent's, once.
    me, gone = os.getpid(), reaped_child()
    listings = iter([[gone], [], []])
    total = tree_cpu_seconds(me, lambda: next(listings))
    assert abs(total - process_cpu_seconds(me, reaped=True)) < 0.05


def test_a_child_read_then_reaped_before_its_parent_is_read_again() -> None:
    # Read alive, gone by the time the parent was read: once reaped its time would count
    # twice, so the reading is dropped. The child burns, then says so and waits: its CPU
    # is settled and large enough that counting it would show.
    me = os.getpid()
    burns_then_waits = [sys.executable, "-c", f"{BURN[-1]}; print(flush=True); input()"]
    child = subprocess.Popen(burns_then_waits, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    listings = iter([[child.pid], [], [], []])
    try:
        assert child.stdout is not None and child.stdout.readline()
        child_cpu = process_cpu_seconds(child.pid)
        total = tree_cpu_seconds(me, lambda: next(listings))
        parent_only = process_cpu_seconds(me, reaped=True)
    finally:
        child.communicate(b"\n")
    assert child_cpu > 0.1
    assert abs(total - parent_only) < 0.05


def test_a_tree_that_never_holds_still_fails_instead_of_guessing() -> None:
    gone = reaped_child()
    with pytest.raises(BenchFailed, match="kept exiting"):
        tree_cpu_seconds(os.getpid(), lambda: [gone], attempts=3)
