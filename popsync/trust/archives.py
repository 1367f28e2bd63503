"""Signed archives: the trust of a registry export loaded by `popsync backfill`.

An archive's records are the contract's RegistryEvents, exported without the per-message
signature the stream carries. The registry signs the file as a whole instead: a detached
Ed25519 signature over the file's SHA-256 and size, its publisher id and key id
(`FILE.sig`, written by `popsync archive sign`). Before one record is read, the signature
is checked against the publisher directory with the stream's own rules (known key, of that
publisher, in force now); then each record is judged by that publisher's authority
(`check_authority`: registry kind, event types, provinces), record by record, with the
stream's reasons. Nothing a record says about itself decides who published it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from popsync.contract import models as m
from popsync.runtime.messages import InboundMessage
from popsync.trust.identity import Publisher, PublisherKey, SigningIdentity
from popsync.trust.signing import Signer, verifies
from popsync.trust.verification import TrustViolation, check_authority, check_in_force

SIGNATURE_SUFFIX = ".sig"
_DOMAIN = b"popsync-archive-signature-v1"
_CHUNK = 1 << 20


class ArchiveRefused(ValueError):
    """An archive that cannot be trusted; the message names the file and what to fix."""


@dataclass(frozen=True)
class ArchiveDigest:
    sha256: bytes
    size: int


def digest_of(path: Path) -> ArchiveDigest:
    """The file's SHA-256 and size, read in bounded chunks."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return ArchiveDigest(sha.digest(), size)


def signed_archive_bytes(digest: ArchiveDigest, publisher_id: str, key_id: str) -> bytes:
    """The canonical bytes a registry signs for one archive (length-prefixed fields)."""
    fields = (
        _DOMAIN,
        digest.sha256,
        str(digest.size).encode(),
        publisher_id.encode(),
        key_id.encode(),
    )
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def sign_archive(path: Path, signer: Signer) -> Path:
    """Write `path`.sig: the signer's detached signature of the archive; returns its path."""
    digest = digest_of(path)
    signature = signer.sign(signed_archive_bytes(digest, signer.publisher_id, signer.key_id))
    form = {
        "publisher": signer.publisher_id,
        "key_id": signer.key_id,
        "sha256": digest.sha256.hex(),
        "size": digest.size,
        "signature": base64.b64encode(signature).decode(),
    }
    out = signature_path(path)
    out.write_text(json.dumps(form) + "\n", encoding="utf-8")
    return out


@dataclass(frozen=True)
class _Claim:
    publisher_id: str
    key_id: str
    sha256: bytes
    size: int
    signature: bytes


_MAX_SIGNATURE_BYTES = 64 * 1024  # a signature file is a few hundred bytes


def _read_claim(path: Path) -> _Claim:
    sig = signature_path(path)
    try:
        with sig.open("rb") as handle:
            text = handle.read(_MAX_SIGNATURE_BYTES + 1)
        if len(text) > _MAX_SIGNATURE_BYTES:
            raise ValueError("too large")
        form = json.loads(text)
        return _Claim(
            str(form["publisher"]),
            str(form["key_id"]),
            bytes.fromhex(form["sha256"]),
            int(form["size"]),
            base64.b64decode(form["signature"], validate=True),
        )
    except FileNotFoundError:
        raise ArchiveRefused(
            f"{path}: no signature {sig.name} beside it: the registry signs its archive "
            f"with `popsync archive sign {path.name} --key KEYFILE`"
        ) from None
    except OSError as exc:
        raise ArchiveRefused(f"{sig}: cannot read it: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise ArchiveRefused(
            f"{sig}: not an archive signature (JSON with publisher, key_id, sha256, size, "
            "signature: `popsync archive sign`)"
        ) from None


def verify_archive(
    path: Path,
    keys: Mapping[str, tuple[PublisherKey, Publisher]],
    now: datetime,
    expiry_grace: timedelta = timedelta(hours=1),
) -> tuple[SigningIdentity, ArchiveDigest]:
    """Who signed the archive at `path`, by the directory's `keys`, and its digest; else
    `ArchiveRefused` naming the file and the reason. Reads the whole file once."""
    claim = _read_claim(path)
    found = keys.get(claim.key_id)
    if found is None:
        raise ArchiveRefused(f"{path}: signing key {claim.key_id} is not in the directory")
    key, publisher = found
    if publisher.publisher_id != claim.publisher_id:
        raise ArchiveRefused(f"{path}: key {claim.key_id} is not {claim.publisher_id}'s")
    digest = digest_of(path)
    if (digest.sha256, digest.size) != (claim.sha256, claim.size):
        raise ArchiveRefused(
            f"{path}: the file is not the one signed (SHA-256 or size differs): "
            "a changed or truncated copy"
        )
    signed = signed_archive_bytes(digest, claim.publisher_id, claim.key_id)
    if not verifies(key.public_key, signed, claim.signature):
        raise ArchiveRefused(f"{path}: the signature of key {claim.key_id} does not verify")
    try:
        check_in_force(key, publisher, now, expiry_grace)
    except TrustViolation as exc:
        raise ArchiveRefused(f"{path}: {exc}") from None
    return SigningIdentity(publisher, key), digest


class ArchiveVerifier:
    """The validator's trust check for records of signed archives: each record's message
    names its archive (`InboundMessage.topic`, see `archive_topic`); its publisher is that
    archive's verified signer, and its authority is checked as the stream's."""

    def __init__(self, signers: Mapping[str, SigningIdentity]) -> None:
        self._signers = dict(signers)  # by archive topic

    async def refresh(self, *, force: bool = False) -> None:
        """Nothing to re-read: each archive was verified once, before it was read."""

    def verify(
        self, message: InboundMessage, event: m.RegistryEvent, now: datetime
    ) -> SigningIdentity:
        identity = self._signers.get(message.topic)
        if identity is None:  # a record of no verified archive never reaches the rules
            raise TrustViolation("UNSIGNED", "the record's archive is not signed")
        check_authority(identity.publisher, event)
        return identity


def archive_topic(file_no: int, name: str) -> str:
    """What a record of a run's archive `file_no` (file `name`) gives as its topic: unique in
    the run (two archives of one name in two folders have two signers), naming the file
    in its dead letters."""
    return f"archive:{file_no}:{name}"
