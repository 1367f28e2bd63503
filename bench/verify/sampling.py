"""Where a server's CPU goes, sampled by py-spy while the load runs (when py-spy is there).

`py-spy record --nonblocking` samples the server's Python stacks (200 a second, idle
threads left out) during a point run for this purpose only, after the measured ones, so
the measured figures are not disturbed by it. The collapsed stacks are summed up as:

- `by_package`: the share of samples whose innermost Python frame is in each package
  (time in C code is counted for the Python frame that called it: a socket write in
  `transport.write` or libpq's send, for instance; the event loop's own work, uvloop's and
  httptools' parsing, shows as the frame running the loop);
- `top_self`: the functions most often innermost;
- `top_project`: popsync's, the services' and the baseline's functions by the share of
  samples they are anywhere on the stack of (inclusive), below the loop; `project_files`
  the same by source file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
_TOP = 12
_LOOP_RUNNERS = {"run_forever", "run_until_complete", "run"}
_LOOP_PACKAGES = {"asyncio", "uvloop", "uvicorn"}
_LOOP = "event loop (uvloop, httptools: C code under the loop's frame)"


def available() -> str | None:
    return shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` and its subprocesses for `seconds` into `output` (collapsed stacks)."""
    spy = available()
    if spy is None:
        raise RuntimeError("py-spy is not installed")
    argv = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", "200", "--nonblocking", "--subprocesses", "--format", "raw"]
    argv += ["--output", str(output)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603


def _package(path: str) -> str:
    """A frame's package, from the file py-spy shows (relative to its sys.path entry):
    `psycopg/_cursor_base.py` is psycopg's; the project's are named by two levels."""
    parts = Path(path).parts
    if not parts:
        return path
    if parts[0] in ("popsync", "services", "bench") and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    return parts[0].removesuffix(".py")


def _is_loop(function: str, path: str) -> bool:
    """A frame that runs the event loop: below it, only callbacks and tasks."""
    return function.rsplit(".", 1)[-1] in _LOOP_RUNNERS and _package(path) in _LOOP_PACKAGES


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for frame in stack.split(";"):
        found = _FRAME.match(frame.strip())
        if found is not None:
            frames.append((found["function"], found["file"]))
    return frames


def summarize(text: str) -> dict[str, Any]:
    """The shares of `py-spy --format raw` output (one `stack count` per line)."""
    by_package: Counter[str] = Counter()
    top_self: Counter[str] = Counter()
    project: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        function, path = frames[-1]
        package = _package(path)
        if _is_loop(function, path):
            package = _LOOP
        by_package[package] += count
        top_self[f"{function} ({path})" if package != _LOOP else _LOOP] += count
        loop = max((n for n, (f, p) in enumerate(frames) if _is_loop(f, p)), default=-1)
        seen = set()
        for function, path in frames[loop + 1 :]:  # the callbacks and tasks only
            owner = _package(path)
            if owner.startswith(("popsync", "services", "bench")):
                for name, counter in ((f"{function} ({path})", project), (path, files)):
                    if name not in seen:
                        seen.add(name)
                        counter[name] += count

    def shares(counter: Counter[str], top: int | None = None) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in counter.most_common(top) if v / total >= 0.005}

    return {
        "samples": total,
        "by_package": shares(by_package),
        "top_self": shares(top_self, _TOP),
        "top_project": shares(project, _TOP),
        "project_files": shares(files),
    }


def difference(
    service: dict[str, Any] | None, baseline: dict[str, Any] | None
) -> dict[str, dict[str, float]]:
    """Server CPU µs per item the service spends over the baseline, by package (positive:
    more), from their sampled points; the largest differences first."""
    if not service or not baseline:
        return {}
    result: dict[str, dict[str, float]] = {}
    for kind, smallest in (("single", 1.0), ("batch", 0.1)):  # µs per item worth showing
        if kind not in service or kind not in baseline:
            continue
        ours = service[kind]["by_package_us_per_item"]
        theirs = baseline[kind]["by_package_us_per_item"]
        deltas = {p: round(ours.get(p, 0.0) - theirs.get(p, 0.0), 2) for p in {*ours, *theirs}}
        total = (
            service[kind]["server_us_per_item_while_sampled"]
            - baseline[kind]["server_us_per_item_while_sampled"]
        )
        ordered = sorted(deltas.items(), key=lambda item: -abs(item[1]))
        result[kind] = {"all": round(total, 2)}
        result[kind] |= {package: delta for package, delta in ordered if abs(delta) >= smallest}
    return result
