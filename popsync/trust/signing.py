"""Signed events: the bytes a publisher signs, and signing and verifying them (Ed25519).

The signature covers a canonical byte string built from the message key, the event's id,
the publisher id, event type, source province and source sequence, the fingerprint of the
writer schema (the Avro single-object header) and the SHA-256 of the whole value: so no
byte of the event can change, nor the event be replayed under another key, publisher or
partition key, without the signature failing. Signature and key id travel as headers;
`popsync dlq replay` sends a dead letter back with its original headers, so a replayed
event still verifies.

Ed25519 through PyNaCl (libsodium): verifying costs about half of what `cryptography`'s
OpenSSL binding does on our machines (bench/README.md), and the validator verifies every
event.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import nacl.exceptions
import nacl.signing

from popsync.contract import models as m
from popsync.contract.codec import HEADER_SIZE
from popsync.trust.identity import SigningIdentity

SIGNATURE_HEADER = "popsync.signature"
KEY_ID_HEADER = "popsync.key-id"
# Set by the validator on a validated event, from the verified signature (never copied from
# the registry's message): the synchronizer passes them on to the store's history.
VERIFIED_PUBLISHER_HEADER = "popsync.verified.publisher"
VERIFIED_KEY_HEADER = "popsync.verified.key-id"
_DOMAIN = b"popsync-event-signature-v1"


def signed_bytes(
    key: bytes | None, value: bytes, event: m.RegistryEvent, publisher_id: str
) -> bytes:
    """The canonical byte string a publisher signs for one message (length-prefixed fields,
    so no two different inputs give the same string)."""
    fields: Sequence[bytes] = (
        _DOMAIN,
        key if key is not None else b"\xff",
        event.event_id.encode(),
        publisher_id.encode(),
        event.event_type.value.encode(),
        event.source_province.encode(),
        str(event.source_sequence).encode(),
        value[2:HEADER_SIZE],  # the writer schema's fingerprint
        hashlib.sha256(value).digest(),
    )
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


class Signer:
    """A publisher's signing key (32-byte Ed25519 seed) and its key id."""

    def __init__(self, publisher_id: str, key_id: str, seed: bytes) -> None:
        self.publisher_id = publisher_id
        self.key_id = key_id
        self._key = nacl.signing.SigningKey(seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of `data` (64 bytes)."""
        return self._key.sign(data).signature

    def headers(
        self, key: bytes | None, value: bytes, event: m.RegistryEvent
    ) -> list[tuple[str, bytes]]:
        """The headers that sign this message."""
        signature = self.sign(signed_bytes(key, value, event, self.publisher_id))
        return [
            (SIGNATURE_HEADER, signature),
            (KEY_ID_HEADER, self.key_id.encode()),
        ]

    def save(self, path: Path) -> None:
        """Write the key file (`load_signer` reads it), readable by its owner only."""
        form = {
            "publisher": self.publisher_id,
            "key_id": self.key_id,
            "ed25519_seed": base64.b64encode(bytes(self._key)).decode(),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(form, handle)
            handle.write("\n")

    @classmethod
    def generate(cls, publisher_id: str, key_id: str) -> Signer:
        return cls(publisher_id, key_id, bytes(nacl.signing.SigningKey.generate()))


class SignerSet:
    """One signer per registry kind, chosen by the event's declared registry: for a
    process that publishes for several registries (the simulator, tests). A registry's
    own publisher holds one `Signer`."""

    def __init__(self, signers: Iterable[tuple[m.SourceRegistry, Signer]]) -> None:
        self._by_kind = dict(signers)

    def signer_for(self, kind: m.SourceRegistry) -> Signer | None:
        return self._by_kind.get(kind)

    def headers(
        self, key: bytes | None, value: bytes, event: m.RegistryEvent
    ) -> list[tuple[str, bytes]]:
        """Signed by the declared registry's signer; none when there is no such signer."""
        signer = self._by_kind.get(event.source_registry)
        return [] if signer is None else signer.headers(key, value, event)


class SigningKeyError(ValueError):
    """A key file that cannot be used; the message names the file, never the key."""


def load_signer(path: Path) -> Signer:
    """The signer a key file holds (JSON: publisher, key_id, ed25519_seed in base64)."""
    try:
        form = json.loads(path.read_text(encoding="utf-8"))
        seed = base64.b64decode(form["ed25519_seed"], validate=True)
        signer = Signer(str(form["publisher"]), str(form["key_id"]), seed)
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, nacl.exceptions.CryptoError):
        raise SigningKeyError(
            f"{path} is not a popsync signing key (JSON with publisher, key_id, "
            "ed25519_seed: `popsync keys generate`)"
        ) from None
    return signer


def verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is `public_key`'s Ed25519 signature of `message`."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def header(headers: Iterable[tuple[str, bytes | str | None]], name: str) -> bytes | None:
    """The last value of header `name` (as bytes), or None."""
    found: bytes | None = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.encode() if isinstance(value, str) else value
    return found


def identity_headers(identity: SigningIdentity) -> list[tuple[str, bytes]]:
    """The headers that tell the next stages who signed a validated event."""
    return [
        (VERIFIED_PUBLISHER_HEADER, identity.publisher.publisher_id.encode()),
        (VERIFIED_KEY_HEADER, identity.key.key_id.encode()),
    ]
