"""Dead letters: a message a worker cannot process, parked whole with the reason.

The value is a `DeadLetter` record (original key and bytes, topic, partition,
offset, stage, reason code, message); the same facts ride as headers so that
operators can filter without decoding. Key = the original key, so a replay
keeps the citizen's partition.

A dead letter always fits the dead-letter topic: an original too large to park whole (a
compressible event can reach the broker far above the event limit) is parked in a small
form, with its first bytes, its size and its SHA-256, marked `original_truncated`, so the
worker never meets a message it cannot park (it would retry, or stop, forever).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime import metrics
from popsync.runtime.exits import StopWorker
from popsync.runtime.messages import Headers, InboundMessage, OutboundMessage
from popsync.runtime.quarantine import Quarantine, SourceGuard
from popsync.settings import DeadLetterLimitSettings
from popsync.topology import MAX_DEAD_LETTER_BYTES

DEAD_LETTER_CODEC = Codec(m.DeadLetter)
# Of an original too large to park whole: enough to recognise it, far below any limit.
KEPT_VALUE_BYTES = 4096
KEPT_KEY_BYTES = 256
# The original headers ride along (a replay must still verify); a genuine message has a
# few hundred bytes of them, so more than this is not kept.
KEPT_HEADER_BYTES = 16 * 1024


def dead_letter(
    message: InboundMessage,
    *,
    topic: str,
    stage: str,
    reason: str,
    description: str,
    event: m.RegistryEvent | None = None,
    now: datetime | None = None,
    source: str | None = None,
) -> OutboundMessage:
    """The dead-letter message for `message`; `description` must hold no personal data.

    Parked whole when that fits the dead-letter topic, else in the small form (module doc).
    """
    record = m.DeadLetter(
        original_key=message.key,
        original_value=message.value,
        original_topic=message.topic,
        original_partition=message.partition,
        original_offset=message.offset,
        stage=stage,
        reason_code=reason,
        message=description[:500],
        event_id=event.event_id if event else None,
        source_registry=event.source_registry.value if event else None,
        source_province=event.source_province if event else None,
        failed_at=now or datetime.now(UTC),
        original_headers=_kept_headers(message),
        source=source,
    )
    headers: Headers = [
        ("popsync.stage", stage.encode()),
        ("popsync.reason", reason.encode()),
        ("popsync.original.topic", message.topic.encode()),
        ("popsync.original.partition", str(message.partition).encode()),
        ("popsync.original.offset", str(message.offset).encode()),
    ]
    letter = OutboundMessage(topic, message.key, DEAD_LETTER_CODEC.encode(record), headers)
    if _size(letter) <= MAX_DEAD_LETTER_BYTES:
        return letter
    return _truncated(message, letter, record)


def _kept_headers(message: InboundMessage) -> list[m.MessageHeader]:
    size = sum(len(name) + len(value or b"") for name, value in message.headers)
    if size > KEPT_HEADER_BYTES:
        return []
    return [m.MessageHeader(name=name, value=value) for name, value in message.headers]


def _size(message: OutboundMessage) -> int:
    headers = sum(len(name) + len(value or b"") for name, value in message.headers)
    return len(message.key or b"") + len(message.value or b"") + headers


def _truncated(
    message: InboundMessage, whole: OutboundMessage, record: m.DeadLetter
) -> OutboundMessage:
    """The small form of a dead letter too large to send: the original's first bytes, its
    size and SHA-256 (of the value; of the key too when that was cut)."""
    value = message.value or b""
    digest = hashlib.sha256(value).hexdigest()
    key = message.key[:KEPT_KEY_BYTES] if message.key is not None else None
    small = record.model_copy(
        update={
            "original_key": key,
            "original_value": value[:KEPT_VALUE_BYTES],
            "original_size": len(value),
            "original_sha256": digest,
            "original_truncated": True,
        }
    )
    headers: Headers = [
        *whole.headers,
        ("popsync.original.size", str(len(value)).encode()),
        ("popsync.original.sha256", digest.encode()),
        ("popsync.original.truncated", b"true"),
    ]
    if message.key is not None and len(message.key) > KEPT_KEY_BYTES:
        headers.append(
            ("popsync.original.key-sha256", hashlib.sha256(message.key).hexdigest().encode())
        )
    return OutboundMessage(whole.topic, key, DEAD_LETTER_CODEC.encode(small), headers)


Outcome = tuple[InboundMessage, str | None]
"""One processed message and its dead-letter reason code (None: processed normally)."""

# Parks that are the containment itself doing its job: counting them would quarantine a
# quarantined source again, or stop a worker for a citizen flood it already contains.
CONTAINED = frozenset({"SOURCE_QUARANTINED", "CITIZEN_DAILY_LIMIT"})


@dataclass
class _Window:
    """The outcomes of the most recent messages of one judged unit (a source, or a worker)."""

    recent: deque[str | None] = field(default_factory=deque)
    reasons: Counter[str] = field(default_factory=Counter)
    parked: int = 0
    consecutive: int = 0

    def copy(self) -> _Window:
        return _Window(deque(self.recent), Counter(self.reasons), self.parked, self.consecutive)

    def add(self, reason: str | None, size: int) -> None:
        self.recent.append(reason)
        if reason is None:
            self.consecutive = 0
        else:
            self.reasons[reason] += 1
            self.parked += 1
            self.consecutive += 1
        if len(self.recent) > size:
            dropped = self.recent.popleft()
            if dropped is not None:
                self.reasons[dropped] -= 1
                self.parked -= 1

    @property
    def ratio(self) -> float:
        return self.parked / len(self.recent) if self.recent else 0.0

    def crossed(self, settings: DeadLetterLimitSettings) -> str | None:
        """Which limit this window just crossed, in words; None: within the limit."""
        if self.consecutive >= settings.max_consecutive:
            return (
                f"{self.consecutive} messages in a row were dead-lettered "
                f"(limit {settings.max_consecutive})"
            )
        full = len(self.recent) == settings.window
        if full and self.parked / settings.window > settings.max_ratio:
            return (
                f"{self.parked} of the last {settings.window} messages were dead-lettered "
                f"({self.parked / settings.window:.0%}, limit {settings.max_ratio:.0%})"
            )
        return None

    def top_reason(self) -> str:
        return self.reasons.most_common(1)[0][0] if +self.reasons else "none"

    def summary(self) -> str:
        top = ", ".join(f"{code}={n}" for code, n in self.reasons.most_common(5) if n)
        return (
            f"{self.parked} of the last {len(self.recent)} messages dead-lettered; "
            f"top reasons: {top or 'none'}"
        )


@dataclass(frozen=True)
class _Crossing:
    at: int  # the worker's message count when the source crossed its limit
    source: str
    reason: str


class DeadLetterLimit:
    """Contains bad input to its source, and stops a worker that looks badly deployed.

    Judged per publishing source when the worker has a `SourceGuard` and the step says
    which source sent each message (`sources`): a source that crosses the limit is
    quarantined (`SourceGuard.decide`) and every other source keeps flowing. Only the
    signature of a bad deployment stops the worker: `bad_deploy_sources` sources crossing
    it for the same reason within one window of the worker's messages. Without sources
    (a worker whose input is popsync's own output), the worker's own window is judged and
    crossing it stops the worker. Either way a window crosses the limit when more than
    `max_ratio` of its most recent `window` messages were parked (judged only once full),
    or as soon as `max_consecutive` were parked in a row (`DeadLetterLimitSettings`).
    Parks that are containment (`CONTAINED`) are not counted.

    The processor calls `observe` with a batch's outcomes *before* it sends any of the
    batch's outputs. `StopWorker` is raised counting nothing of the batch: the process
    exits without sending or committing any of it, so after the fix the whole batch is
    processed again: nothing is lost and nothing is sent twice. A batch retried after an
    infrastructure fault is not counted twice: a message at or below the highest offset
    already observed on its partition is skipped. Messages hold counts and reason codes
    only, never personal data.
    """

    def __init__(
        self, settings: DeadLetterLimitSettings, stage: str, guard: SourceGuard | None = None
    ) -> None:
        self._settings = settings
        self._stage = stage
        self._guard = guard
        self._worker = _Window()
        self._sources: dict[str, _Window] = {}
        self._crossings: deque[_Crossing] = deque()
        self._seen = 0
        self._observed: dict[tuple[str, int], int] = {}

    @property
    def parked_in_window(self) -> int:
        return self._worker.parked

    @property
    def consecutive(self) -> int:
        return self._worker.consecutive

    def observe(
        self,
        outcomes: Iterable[Outcome],
        *,
        sources: Sequence[str] | None = None,
        recount: bool = False,
    ) -> None:
        """Count a batch's outcomes (`sources`: who sent each, in order); quarantine the
        sources that cross the limit, or raise `StopWorker`, counting none, as above.

        `recount`: count them even if their offsets were counted already (a message
        counted as processed, then parked after all when a later part of its batch failed).
        """
        guard = self._guard if sources is not None else None
        worker, observed, seen = self._worker.copy(), dict(self._observed), self._seen
        windows: dict[str, _Window] = {}  # copies of the touched sources' windows
        crossings = deque(self._crossings)
        crossed: dict[str, str] = {}  # source -> what it crossed, in words
        for i, (message, reason) in enumerate(outcomes):
            where = (message.topic, message.partition)
            if message.offset <= observed.get(where, -1) and not recount:
                continue  # already counted: the same batch, retried
            observed[where] = max(message.offset, observed.get(where, -1))
            if reason in CONTAINED:
                continue
            seen += 1
            worker.add(reason, self._settings.window)
            if guard is None or sources is None:
                if (why := worker.crossed(self._settings)) is not None:
                    self._publish(worker)
                    raise self._stop(why, worker.summary())
                continue
            source = sources[i]
            if guard.is_quarantined(source) or source in crossed:
                continue
            if source not in windows:
                windows[source] = self._sources.get(source, _Window()).copy()
            window = windows[source]
            window.add(reason, self._settings.window)
            if (why := window.crossed(self._settings)) is None:
                continue
            crossed[source] = f"{why}; {window.summary()}"
            crossings.append(_Crossing(seen, source, window.top_reason()))
            self._check_deployment(crossings, seen, worker)
        self._worker, self._observed, self._seen, self._crossings = (
            worker,
            observed,
            seen,
            crossings,
        )
        for source, window in windows.items():
            if source in crossed:  # a fresh window once released
                self._sources.pop(source, None)
            else:
                self._sources[source] = window
        if guard is not None and crossed:
            reasons = {c.source: c.reason for c in crossings}
            guard.decide(
                [
                    Quarantine(source, self._stage, reasons[source], why)
                    for source, why in crossed.items()
                ]
            )
        self._publish(worker)

    def _check_deployment(self, crossings: deque[_Crossing], seen: int, worker: _Window) -> None:
        """Stop if enough sources crossed the limit for one reason within one window."""
        while crossings and crossings[0].at <= seen - self._settings.window:
            crossings.popleft()
        reason = crossings[-1].reason
        same = sorted({c.source for c in crossings if c.reason == reason})
        if len(same) < self._settings.bad_deploy_sources:
            return
        self._publish(worker)
        raise StopWorker(
            f"dead-letter limit reached in {self._stage}: {len(same)} sources crossed it "
            f"for the same reason ({reason}) within {self._settings.window} messages "
            f"({', '.join(same[:10])}): the signature of a bad deployment, not of bad input. "
            "Nothing of this batch was sent or committed: fix the cause (or raise "
            "POPSYNC_DEAD_LETTER_LIMIT__BAD_DEPLOY_SOURCES) and restart; sources quarantined "
            "before this batch stay so until `popsync sources release`"
        )

    def _publish(self, worker: _Window) -> None:
        metrics.DEAD_LETTER_WINDOW_RATIO.labels(self._stage).set(worker.ratio)
        metrics.DEAD_LETTERS_IN_A_ROW.labels(self._stage).set(worker.consecutive)

    def _stop(self, why: str, summary: str) -> StopWorker:
        return StopWorker(
            f"dead-letter limit reached in {self._stage}: {why}; {summary}. Nothing of "
            "this batch was sent or committed: fix the cause (or raise "
            "POPSYNC_DEAD_LETTER_LIMIT__*) and restart; the batch will be processed again"
        )
