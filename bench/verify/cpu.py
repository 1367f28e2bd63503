"""CPU time of processes and their trees, as the kernel counts it (proc(5))."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system time of `pid` (0.0 once it is gone); with `reaped`, also that of
    the children it has waited for (utime, stime, cutime, cstime)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return sum(int(f) for f in fields[11 : 15 if reaped else 13]) / _TICK


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None and len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def tree_cpu_seconds(pid: int, attempts: int = 20) -> tuple[float, float]:
    """User and system time of `pid`, its reaped children and every live descendant.

    A process that exits while the tree is read would be missed (listed, gone when read)
    or counted twice (read, then reaped into its parent's time): such a reading is taken
    again. The reading is exact for a tree whose parent is the one that reaps (PostgreSQL's
    postmaster, uvicorn's supervisor)."""
    totals = (0.0, 0.0)
    for _ in range(attempts):
        reaped = _reaped(pid)
        readings = [_stat_fields(child) for child in descendants(pid)]
        own = _stat_fields(pid)
        if own is None or any(fields is None for fields in readings) or _reaped(pid) != reaped:
            continue  # one exited meanwhile: read again
        user = int(own[11]) + int(own[13]) + sum(int(f[11]) for f in readings if f)
        system = int(own[12]) + int(own[14]) + sum(int(f[12]) for f in readings if f)
        totals = (user / _TICK, system / _TICK)
        if _reaped(pid) == reaped:
            return totals
    return totals


def _reaped(pid: int) -> tuple[str, ...]:
    fields = _stat_fields(pid)
    return () if fields is None else tuple(fields[13:15])


def machine_busy_seconds() -> float:
    """CPU time spent by every core on anything but idle and iowait, since boot (proc(5),
    the `cpu` line of /proc/stat), in seconds."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    busy = sum(values[:8]) - idle  # user..steal; guest time is already in user
    return busy / _TICK
