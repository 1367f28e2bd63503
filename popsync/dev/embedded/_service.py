"""What every embedded service shares: started and stopped around a `with` block."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Self

LOG_TAIL_BYTES = 4000


def log_tail(path: Path, what: str) -> str:
    """The end of a service's log, for the error that says why it did not start."""
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return f"<no {what} log>"


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
