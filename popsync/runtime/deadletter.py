"""Dead letters: a message a worker cannot process, parked whole with the reason.

The value is a `DeadLetter` record (original key and bytes, topic, partition,
offset, stage, reason code, message); the same facts ride as headers so that
operators can filter without decoding. Key = the original key, so a replay
keeps the citizen's partition.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from datetime import UTC, datetime

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime import metrics
from popsync.runtime.exits import StopWorker
from popsync.runtime.messages import Headers, InboundMessage, OutboundMessage
from popsync.settings import DeadLetterLimitSettings

DEAD_LETTER_CODEC = Codec(m.DeadLetter)


def dead_letter(
    message: InboundMessage,
    *,
    topic: str,
    stage: str,
    reason: str,
    description: str,
    event: m.RegistryEvent | None = None,
    now: datetime | None = None,
) -> OutboundMessage:
    """The dead-letter message for `message`; `description` must hold no personal data."""
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
    )
    headers: Headers = [
        ("popsync.stage", stage.encode()),
        ("popsync.reason", reason.encode()),
        ("popsync.original.topic", message.topic.encode()),
        ("popsync.original.partition", str(message.partition).encode()),
        ("popsync.original.offset", str(message.offset).encode()),
    ]
    return OutboundMessage(topic, message.key, DEAD_LETTER_CODEC.encode(record), headers)


Outcome = tuple[InboundMessage, str | None]
"""One processed message and its dead-letter reason code (None: processed normally)."""


class DeadLetterLimit:
    """Stops a worker whose dead-lettering looks like a bad deploy rather than bad input.

    Over the most recent `window` messages a worker processed, it stops when more
    than `max_ratio` of them were parked (judged only once the window is full), or
    as soon as `max_consecutive` were parked in a row (`DeadLetterLimitSettings`).

    The step calls `observe` with a batch's outcomes *before* it sends any of the
    batch's outputs. Crossing the limit raises `StopWorker`: the process exits
    without sending or committing anything of that batch, so after the fix (or a
    higher limit) the whole batch is processed again: nothing is lost and nothing is
    sent twice. A batch retried after an infrastructure fault is not counted twice:
    a message at or below the highest offset already observed on its partition is
    skipped. The stop message holds counts and reason codes only, never personal data.
    """

    def __init__(self, settings: DeadLetterLimitSettings, stage: str) -> None:
        self._settings = settings
        self._stage = stage
        self._recent: deque[str | None] = deque()
        self._reasons: Counter[str] = Counter()
        self._parked = 0
        self._consecutive = 0
        self._observed: dict[tuple[str, int], int] = {}

    @property
    def parked_in_window(self) -> int:
        return self._parked

    @property
    def consecutive(self) -> int:
        return self._consecutive

    def observe(self, outcomes: Iterable[Outcome], *, recount: bool = False) -> None:
        """Count a batch's outcomes; raise `StopWorker`, counting none, past the limit.

        `recount`: count them even if their offsets were counted already (a message
        counted as processed, then parked after all when a later part of its batch failed).
        """
        window, max_in_a_row = self._settings.window, self._settings.max_consecutive
        recent, reasons, parked = deque(self._recent), Counter(self._reasons), self._parked
        consecutive, observed = self._consecutive, dict(self._observed)
        for message, reason in outcomes:
            where = (message.topic, message.partition)
            if message.offset <= observed.get(where, -1) and not recount:
                continue  # already counted: the same batch, retried
            observed[where] = max(message.offset, observed.get(where, -1))
            recent.append(reason)
            if reason is None:
                consecutive = 0
            else:
                reasons[reason] += 1
                parked += 1
                consecutive += 1
            if len(recent) > window:
                dropped = recent.popleft()
                if dropped is not None:
                    reasons[dropped] -= 1
                    parked -= 1
            if consecutive >= max_in_a_row:
                self._publish(parked / len(recent), consecutive)
                raise self._stop(
                    f"{consecutive} messages in a row were dead-lettered (limit {max_in_a_row})",
                    len(recent),
                    reasons,
                )
            if len(recent) == window and parked / window > self._settings.max_ratio:
                self._publish(parked / window, consecutive)
                raise self._stop(
                    f"{parked} of the last {window} messages were dead-lettered "
                    f"({parked / window:.0%}, limit {self._settings.max_ratio:.0%})",
                    len(recent),
                    reasons,
                )
        self._recent, self._reasons, self._parked = recent, +reasons, parked
        self._consecutive, self._observed = consecutive, observed
        self._publish(parked / len(recent) if recent else 0.0, consecutive)

    def _publish(self, ratio: float, consecutive: int) -> None:
        metrics.DEAD_LETTER_WINDOW_RATIO.labels(self._stage).set(ratio)
        metrics.DEAD_LETTERS_IN_A_ROW.labels(self._stage).set(consecutive)

    def _stop(self, why: str, seen: int, reasons: Counter[str]) -> StopWorker:
        parked = sum(reasons.values())
        top = ", ".join(f"{code}={count}" for code, count in reasons.most_common(5) if count)
        return StopWorker(
            f"dead-letter limit reached in {self._stage}: {why}; {parked} of the last "
            f"{seen} messages dead-lettered; top reasons: {top or 'none'}. Nothing of "
            "this batch was sent or committed: fix the cause (or raise "
            "POPSYNC_DEAD_LETTER_LIMIT__*) and restart; the batch will be processed again"
        )
