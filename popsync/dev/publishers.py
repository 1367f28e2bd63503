"""Development publishers: one per registry kind, speaking for every province, so the demo,
the simulator, the tests and the benchmark publish signed events like a real registry.

Their keys are derived from fixed seeds, known to everyone who reads this file: they are
for the embedded stack only, and a production directory never holds them (`popsync
publishers list` names them `dev-…`).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from popsync.adapters.postgres.publishers import NewKey, add_key, add_publisher, find_publisher
from popsync.contract import models as m
from popsync.domain.authority import EVENT_AUTHORITY
from popsync.domain.provinces import CURRENT_PROVINCES, LEGACY_PROVINCES
from popsync.settings import Settings
from popsync.trust.archives import sign_archive
from popsync.trust.identity import Publisher, PublisherKey
from popsync.trust.signing import Signer, SignerSet

KINDS = tuple(kind for kind in m.SourceRegistry if kind is not m.SourceRegistry.UNKNOWN)
OPERATOR = "popsync-dev"
DEV_KEYS_VALID_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def dev_publisher_id(kind: m.SourceRegistry) -> str:
    return f"dev-{kind.value.lower().replace('_', '-')}"


def dev_signer(kind: m.SourceRegistry) -> Signer:
    seed = hashlib.sha256(f"popsync-dev-signing-key:{kind.value}".encode()).digest()
    publisher_id = dev_publisher_id(kind)
    return Signer(publisher_id, f"{publisher_id}-k1", seed)


def dev_signers() -> SignerSet:
    return SignerSet((kind, dev_signer(kind)) for kind in KINDS)


def dev_publisher(kind: m.SourceRegistry) -> Publisher:
    types = frozenset(t for t, kinds in EVENT_AUTHORITY.items() if kind in kinds)
    return Publisher(
        dev_publisher_id(kind),
        kind,
        frozenset(CURRENT_PROVINCES) | frozenset(LEGACY_PROVINCES),
        types,
    )


def register_dev_publishers(settings: Settings) -> None:
    """Put the development publishers and their keys in the directory (idempotent)."""
    dsn = settings.postgres.dsn.get_secret_value()
    conn: psycopg.Connection[Any]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for kind in KINDS:
            publisher = dev_publisher(kind)
            if find_publisher(conn, publisher.publisher_id) is not None:
                continue
            add_publisher(conn, publisher, OPERATOR)
            signer = dev_signer(kind)
            key = NewKey(
                signer.key_id, signer.public_key, valid_from=datetime(2000, 1, 1, tzinfo=UTC)
            )
            add_key(conn, publisher.publisher_id, key, OPERATOR)


def dev_keys() -> dict[str, tuple[PublisherKey, Publisher]]:
    """The development publishers' keys, by key id, as a directory holds them."""
    found: dict[str, tuple[PublisherKey, Publisher]] = {}
    for kind in KINDS:
        signer = dev_signer(kind)
        key = PublisherKey(
            signer.key_id, signer.publisher_id, signer.public_key, DEV_KEYS_VALID_FROM, None
        )
        found[signer.key_id] = (key, dev_publisher(kind))
    return found


class DevDirectory:
    """The development publishers as a directory (`PublisherDirectory`), in memory: for
    what checks signatures in-process (the demo's reference result, benchmarks, tests)."""

    def __init__(self) -> None:
        self.entries = dev_keys()

    async def keys(self) -> dict[str, tuple[PublisherKey, Publisher]]:
        return dict(self.entries)


def sign_as_dev_registry(path: Path, source: m.SourceRegistry) -> None:
    """Sign a simulated registry's file with its development key (known to the embedded
    stack's directory), so that `popsync backfill` takes it as that registry's archive."""
    if source in KINDS:
        sign_archive(path, dev_signer(source))
