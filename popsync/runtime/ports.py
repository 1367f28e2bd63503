"""The ports the runtime and the steps depend on; adapters implement them, tests fake them
(tests/fakes.py), and one contract suite runs against both (tests/integration/contract)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from popsync.runtime.messages import OutboundMessage


class Producer(Protocol):
    """Sends messages and returns only once the broker has every one of them."""

    async def send_all(self, messages: Sequence[OutboundMessage]) -> None:
        """Raise (an infrastructure error, see `popsync.runtime.retry`) unless all landed."""
        ...

    def close(self) -> None: ...
