"""Signed test input, as a registry sends it: the development publishers' keys
(`popsync.dev.publishers`), a verifier that knows them, and publishers of one's own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import psycopg

from popsync.adapters.postgres.publishers import NewKey, add_key, add_publisher, publisher_entry
from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.dev.publishers import DEV_KEYS_VALID_FROM, DevDirectory, dev_signers
from popsync.runtime.messages import InboundMessage
from popsync.settings import Settings
from popsync.trust.identity import PublisherDirectory
from popsync.trust.signing import Signer
from popsync.trust.verification import Verifier

EVENTS = Codec(m.RegistryEvent)
DEV_SIGNERS = dev_signers()


def dev_verifier(directory: PublisherDirectory | None = None) -> Verifier:
    """A verifier that knows the development publishers (loaded, ready to use)."""
    verifier = Verifier(directory or DevDirectory(), refresh_seconds=3600)
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
    "dev_verifier",
    "register_publisher",
    "signature_headers",
    "signed",
]


def register_publisher(
    settings: Settings, publisher_id: str, kind: m.SourceRegistry, provinces: Sequence[str]
) -> Signer:
    """A publisher of one's own in the settings' directory (PostgreSQL), with a fresh key:
    a registry of one kind and scope, e.g. the civil-status registry of province 01."""
    signer = Signer.generate(publisher_id, f"{publisher_id}-k1")
    with psycopg.connect(settings.postgres.dsn.get_secret_value(), autocommit=True) as conn:
        add_publisher(conn, publisher_entry(publisher_id, kind, provinces), "tests")
        key = NewKey(signer.key_id, signer.public_key, valid_from=DEV_KEYS_VALID_FROM)
        add_key(conn, publisher_id, key, "tests")
    return signer
