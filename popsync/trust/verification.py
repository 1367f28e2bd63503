"""The validator's check of who published an event, and what that publisher may do.

A message is trusted only through its signature (`popsync.trust.signing`): its key id
names a key of the publisher directory, the signature verifies under that key over the
message's canonical bytes, and the publisher the key belongs to — not what the event
says about itself — decides the rest: the event's declared registry must be the
publisher's kind, its type one the publisher may publish, its province one it speaks
for. Each failure is its own dead-letter reason.

Time is the validator's, never the event's (a backfill carries events recorded years before
its key existed): a key is accepted from its `valid_from` until `expiry_grace` after its
`valid_until`, so events a registry signed just before a rotation's old key ended, still
in flight, pass; a revoked key, or a revoked publisher, is refused from the revocation on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from popsync.contract import models as m
from popsync.domain.provinces import admin_code
from popsync.runtime.messages import InboundMessage
from popsync.trust.identity import Publisher, PublisherDirectory, PublisherKey, SigningIdentity
from popsync.trust.signing import KEY_ID_HEADER, SIGNATURE_HEADER, header, signed_bytes, verifies

SIGNER_UNKNOWN = "SIGNER_UNKNOWN"


class TrustViolation(ValueError):
    """Why a message's publisher is not trusted for it; `reason` is a catalogue code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EventVerifier(Protocol):
    """What the validator asks of a trust check: who may have published a message's event
    (the stream's `Verifier`: its own signature; a backfill's: the signed archive it is in,
    `popsync.trust.archives`)."""

    async def refresh(self, *, force: bool = False) -> None: ...

    def verify(
        self, message: InboundMessage, event: m.RegistryEvent, now: datetime
    ) -> SigningIdentity: ...


class Verifier:
    """Checks signatures against the publisher directory, re-read every `refresh_seconds`."""

    def __init__(
        self,
        directory: PublisherDirectory,
        refresh_seconds: float,
        expiry_grace: timedelta = timedelta(hours=1),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._refresh_seconds = refresh_seconds
        self._expiry_grace = expiry_grace
        self._clock = clock
        self._keys: dict[str, tuple[PublisherKey, Publisher]] = {}
        self._loaded_at: float | None = None

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the directory, at most every `refresh_seconds` unless `force`d (before
        refusing a key it does not know: a key just added is then known at once)."""
        now = self._clock()
        recent = self._loaded_at is not None and now - self._loaded_at < self._refresh_seconds
        if recent and not force:
            return
        self._keys = await self._directory.keys()
        self._loaded_at = now

    def verify(
        self, message: InboundMessage, event: m.RegistryEvent, now: datetime
    ) -> SigningIdentity:
        """The identity that signed `message`, allowed to publish `event`; else raises
        `TrustViolation` with the reason."""
        signature = header(message.headers, SIGNATURE_HEADER)
        key_id = header(message.headers, KEY_ID_HEADER)
        if signature is None or key_id is None:
            raise TrustViolation("UNSIGNED", "no signature: only signed events are accepted")
        found = self._keys.get(key_id.decode(errors="replace"))
        if found is None:
            raise TrustViolation(SIGNER_UNKNOWN, "the signing key is not in the directory")
        key, publisher = found
        signed = signed_bytes(message.key, message.value or b"", event, publisher.publisher_id)
        if not verifies(key.public_key, signed, signature):
            raise TrustViolation("SIGNATURE_INVALID", f"signature of key {key.key_id} fails")
        check_in_force(key, publisher, now, self._expiry_grace)
        check_authority(publisher, event)
        return SigningIdentity(publisher, key)


def check_in_force(
    key: PublisherKey, publisher: Publisher, now: datetime, grace: timedelta
) -> None:
    if key.revoked_by(now) or publisher.revoked_by(now):
        raise TrustViolation("KEY_REVOKED", f"key {key.key_id} or its publisher is revoked")
    if not key.in_window(now, grace):
        raise TrustViolation("KEY_EXPIRED", f"key {key.key_id} is outside its validity window")


def check_authority(publisher: Publisher, event: m.RegistryEvent) -> None:
    if event.source_registry is not publisher.kind:
        raise TrustViolation(
            "SOURCE_NOT_SIGNER",
            f"declares {event.source_registry.value}; signed by {publisher.publisher_id} "
            f"({publisher.kind.value})",
        )
    if not publisher.may_publish(event.event_type):
        raise TrustViolation(
            "EVENT_TYPE_NOT_PERMITTED",
            f"{publisher.publisher_id} may not publish {event.event_type.value}",
        )
    province = admin_code(event.source_province)
    if province is None or not publisher.speaks_for(province):
        raise TrustViolation(
            "PROVINCE_OUT_OF_SCOPE",
            f"{publisher.publisher_id} does not speak for province {event.source_province}",
        )
