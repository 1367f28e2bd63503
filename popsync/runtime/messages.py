"""What a step reads and what it writes: the runtime's messages, free of any client library."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class InboundMessage:
    """One consumed message, with everything a dead letter needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass
class OutboundMessage:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
