"""Quarantine: a publishing source that sends too much bad input is stopped at the door.

`DeadLetterLimit` decides (per source, see its doc); the `SourceGuard` of a worker keeps
what was decided, and what is in force, in step with PostgreSQL (`source_quarantine`,
`popsync.adapters.postgres.quarantine`), so that every instance of every worker agrees
and an operator's release (`popsync sources release`) takes effect within
`quarantine_refresh_seconds`. The validator parks every further message of a quarantined
source whole, as SOURCE_QUARANTINED: replayable once the source is released.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from popsync.runtime import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quarantine:
    """A decision to quarantine `source`; `detail` holds counts and codes, no personal data."""

    source: str
    stage: str
    reason: str  # its most frequent dead-letter reason
    detail: str


class QuarantineStore(Protocol):
    """Where quarantines are kept (`popsync.adapters.postgres.quarantine`)."""

    async def active(self) -> set[str]: ...

    async def quarantine(self, decisions: Sequence[Quarantine]) -> None: ...


class SourceGuard:
    """A worker's view of the quarantined sources: those in force, and its own decisions
    not yet stored (in force at once for this worker)."""

    def __init__(
        self,
        store: QuarantineStore,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._active: set[str] = set()
        self._pending: dict[str, Quarantine] = {}
        self._loaded_at: float | None = None

    def is_quarantined(self, source: str) -> bool:
        return source in self._active or source in self._pending

    def decide(self, decisions: Sequence[Quarantine]) -> None:
        """Quarantine these sources from now on; stored by the next `flush`."""
        for decision in decisions:
            self._pending[decision.source] = decision
            log.warning(
                "%s: quarantined source %s (%s): %s",
                decision.stage,
                decision.source,
                decision.reason,
                decision.detail,
            )

    async def flush(self) -> None:
        """Store the decisions taken since the last flush; idempotent, so a retry is safe."""
        if not self._pending:
            return
        decisions = list(self._pending.values())
        await self._store.quarantine(decisions)
        for decision in decisions:
            metrics.SOURCE_QUARANTINES.labels(decision.stage, decision.reason).inc()
            self._active.add(decision.source)
            del self._pending[decision.source]
        self._publish()

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read what is in force, at most every `refresh_seconds` unless `force`d (before
        parking a message as quarantined: a release then takes effect at once)."""
        now = self._clock()
        recent = self._loaded_at is not None and now - self._loaded_at < self._refresh_seconds
        if recent and not force:
            return
        active = await self._store.active()
        for source in self._active - active - self._pending.keys():
            log.info("source %s released from quarantine", source)
            with contextlib.suppress(KeyError):  # never published by this process
                metrics.SOURCE_QUARANTINED.remove(source)
        self._active = active
        self._loaded_at = now
        self._publish()

    def _publish(self) -> None:
        for source in self._active | self._pending.keys():
            metrics.SOURCE_QUARANTINED.labels(source).set(1)
