"""The publisher directory's model: who may publish what, and with which keys.

A publisher is one registry in one scope: a registry kind (the contract's
`SourceRegistry`), the provinces it speaks for, and the event types it may publish. It
signs with Ed25519 keys; each key has an id, a validity window and may be revoked. The
directory itself lives in PostgreSQL (`popsync.adapters.postgres.publishers`), changed only
by operators (`popsync publishers …`, `popsync keys …`), every change audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from popsync.contract import models as m


@dataclass(frozen=True)
class Publisher:
    """A registry allowed to publish: e.g. `civil-status-79`, CIVIL_STATUS, provinces {79}."""

    publisher_id: str
    kind: m.SourceRegistry
    provinces: frozenset[str]  # 2-digit admin codes, current or legacy, as the registry sends
    event_types: frozenset[m.EventType]
    revoked_at: datetime | None = None

    def may_publish(self, event_type: m.EventType) -> bool:
        return event_type in self.event_types

    def speaks_for(self, province: str) -> bool:
        return province in self.provinces

    def revoked_by(self, moment: datetime) -> bool:
        return self.revoked_at is not None and moment >= self.revoked_at


@dataclass(frozen=True)
class PublisherKey:
    """One Ed25519 public key of a publisher (32 raw bytes), valid in [valid_from, valid_until)."""

    key_id: str
    publisher_id: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None
    revoked_at: datetime | None = None

    def revoked_by(self, moment: datetime) -> bool:
        return self.revoked_at is not None and moment >= self.revoked_at

    def in_window(self, moment: datetime, grace: timedelta = timedelta(0)) -> bool:
        """Within [valid_from, valid_until + grace) at `moment`."""
        ended = self.valid_until is not None and moment >= self.valid_until + grace
        return moment >= self.valid_from and not ended

    def usable_at(self, moment: datetime) -> bool:
        """Neither revoked nor outside its window at `moment`."""
        return not self.revoked_by(moment) and self.in_window(moment)


@dataclass(frozen=True)
class SigningIdentity:
    """What a verified signature proves: this publisher, with this key."""

    publisher: Publisher
    key: PublisherKey


class PublisherDirectory(Protocol):
    """Keys and their publishers by key id (a snapshot the validator refreshes)."""

    async def keys(self) -> dict[str, tuple[PublisherKey, Publisher]]: ...
