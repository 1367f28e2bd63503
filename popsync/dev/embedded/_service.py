"""What every embedded service shares: started and stopped around a `with` block, and
whether a process it started still runs."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

LOG_TAIL_BYTES = 4000


def log_tail(path: Path, what: str) -> str:
    """The end of a service's log, for the error that says why it did not start."""
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return f"<no {what} log>"


def pid_state(pid: int) -> Literal["alive", "zombie", "gone"]:
    """Like kill(pid, 0), but a zombie (exited, never reaped) does not count as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone" if Path("/proc/self/stat").exists() else "alive"
    except OSError:
        return "alive"
    state = proc_stat.rsplit(")", 1)[-1].split()[0]
    return "zombie" if state in ("Z", "X") else "alive"


class EmbeddedService:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
