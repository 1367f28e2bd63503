"""Signed test input, as a registry sends it: the development publishers' keys
(`popsync.dev.publishers`), and a directory that knows them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.dev.publishers import KINDS, dev_publisher, dev_signer, dev_signers
from popsync.runtime.messages import InboundMessage
from popsync.trust.identity import Publisher, PublisherKey
from popsync.trust.verification import Verifier

EVENTS = Codec(m.RegistryEvent)
DEV_SIGNERS = dev_signers()


class InMemoryPublisherDirectory:
    """`popsync.trust.identity.PublisherDirectory` in memory: the development publishers,
    plus whatever a test adds."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[PublisherKey, Publisher]] = {}
        for kind in KINDS:
            signer = dev_signer(kind)
            self.add(dev_publisher(kind), signer.key_id, signer.public_key)

    def add(
        self,
        publisher: Publisher,
        key_id: str,
        public_key: bytes,
        valid_until: datetime | None = None,
        revoked_at: datetime | None = None,
    ) -> None:
        key = PublisherKey(
            key_id,
            publisher.publisher_id,
            public_key,
            datetime(2000, 1, 1, tzinfo=UTC),
            valid_until,
            revoked_at,
        )
        self.entries[key_id] = (key, publisher)

    async def keys(self) -> dict[str, tuple[PublisherKey, Publisher]]:
        return dict(self.entries)


def dev_verifier(directory: InMemoryPublisherDirectory | None = None) -> Verifier:
    """A verifier that knows the development publishers (loaded, ready to use)."""
    verifier = Verifier(directory or InMemoryPublisherDirectory(), refresh_seconds=3600)
    asyncio.run(verifier.refresh())
    return verifier


def signature_headers(key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
    """How a registry would sign these bytes: signed by its development key when they are
    an event (whatever else is wrong with it), unsigned when they do not even decode."""
    if value is None:
        return []
    try:
        event = EVENTS.decode(value)
    except DecodeError:
        return []
    return DEV_SIGNERS.headers(key, value, event)


def signed(message: InboundMessage) -> InboundMessage:
    """`message` with the signature its registry would have given it."""
    headers = (*message.headers, *signature_headers(message.key, message.value))
    return InboundMessage(
        message.topic, message.partition, message.offset, message.key, message.value, headers
    )


__all__ = [
    "DEV_SIGNERS",
    "InMemoryPublisherDirectory",
    "dev_verifier",
    "signature_headers",
    "signed",
]
