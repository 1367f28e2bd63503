"""The access audit: one append-only row per question a partner asked (an item of a
batch is a question), with a keyed hash of the PIN, never the PIN.

The hash is HMAC-SHA256 keyed with `POPSYNC_SERVE__AUDIT_KEY`: a plain hash of a PIN could
be reversed by hashing every possible PIN (there are fewer than 10^12), so whoever reads
the table without the key cannot tell whom a row is about; `popsync audit citizen PIN`,
with the key, finds a citizen's rows.

Rows are written behind the answers, in one COPY per `audit_flush_seconds`, so a request
does not wait for its own INSERT. What that costs, said plainly: a process killed with
SIGKILL loses the rows of its last flush interval (50 ms by default); a graceful stop
writes them all. While PostgreSQL cannot take them the rows wait in memory, and past
`audit_max_backlog` the service refuses requests (503): it answers nothing it could not
audit; the rows of those refusals are then dropped and counted
(`popsync_audit_rows_dropped_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence

from popsync.adapters.postgres.partners import AuditRow
from popsync.runtime import metrics

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 32
_RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


def pin_hash(key: bytes, pin: str) -> bytes:
    # hmac.digest: OpenSSL's one-shot HMAC, a tenth of hmac.new(...).digest()'s CPU.
    return hmac.digest(key, pin.encode("ascii"), "sha256")


Append = Callable[[Sequence[AuditRow]], Awaitable[None]]


class AuditTrail:
    """Rows waiting to be written, and the task that writes them."""

    def __init__(self, append: Append, flush_seconds: float, max_backlog: int) -> None:
        self._append = append
        self._flush_seconds = flush_seconds
        self._max_backlog = max_backlog
        self._pending: list[AuditRow] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failures = 0

    @property
    def backlog(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self._max_backlog

    @property
    def healthy(self) -> bool:
        """False while writes fail or the backlog is past half its limit."""
        return self._failures == 0 and len(self._pending) < self._max_backlog // 2

    def record(self, rows: Sequence[AuditRow], *, answered: bool = True) -> None:
        """Keep `rows` to write. The rows of an answer are always kept (an answer is
        refused before it is given once the backlog is `full`, so these are bounded by
        the requests in flight). A refusal's rows are dropped and counted past the limit:
        a flood of bad credentials while PostgreSQL is down must not fill the memory."""
        if not answered and len(self._pending) >= self._max_backlog:
            metrics.AUDIT_ROWS_DROPPED.inc(len(rows))
            return
        self._pending.extend(rows)
        metrics.AUDIT_BACKLOG.set(len(self._pending))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        # Stopped by `close`, never cancelled while it can finish: a cancel inside a COPY
        # would leave its rows to `_flush_once`'s handler, but a finished COPY is cheaper.
        while not self._stopping.is_set():
            failures = min(self._failures, len(_RETRY_SECONDS))
            delay = _RETRY_SECONDS[failures - 1] if failures else self._flush_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            await self._flush_once()

    async def _flush_once(self) -> bool:
        if not self._pending:
            return True
        rows, self._pending = self._pending, []
        try:
            await self._append(rows)
        except BaseException as exc:  # kept and retried (cancelled too): no row is lost
            self._pending[:0] = rows
            if not isinstance(exc, Exception):
                raise
            self._failures += 1
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.warning("access audit: %d rows not written yet (%s)", len(rows), type(exc).__name__)
            return False
        self._failures = 0
        metrics.AUDIT_ROWS_WRITTEN.inc(len(rows))
        metrics.AUDIT_BACKLOG.set(len(self._pending))
        return True

    async def close(self, timeout: float) -> None:
        """Stop the writer and write what is left, trying for at most `timeout` seconds."""
        self._stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._task is not None:
            _, running = await asyncio.wait({self._task}, timeout=timeout)
            for task in running:  # a write hanging past the deadline: its rows are kept
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._pending and loop.time() < deadline:
            try:
                written = await asyncio.wait_for(self._flush_once(), deadline - loop.time())
            except TimeoutError:
                break
            if not written:
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        if self._pending:
            log.error("access audit: %d rows could not be written before exit", len(self._pending))
