"""The store writer's transaction on a real PostgreSQL: rows and consumed offsets together."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from popsync.adapters.store import CitizenStore, Consumed, Database, WriteResult
from popsync.contract import models as m
from popsync.settings import Settings
from popsync.stack import EmbeddedStack, migrate

pytestmark = pytest.mark.integration

TOPIC = "store-test.citizen-updates"
AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def settings(stack: EmbeddedStack) -> Settings:
    settings = stack.settings_for("storetest")
    migrate(settings)
    return settings


def update(pin: str, version: int, name: str) -> m.CitizenUpdate:
    return m.CitizenUpdate(
        pin=pin,
        version=version,
        snapshot=m.CitizenSnapshot(pin=pin, full_name=name),
        changed_fields=["full_name"],
        event_id=f"event-{pin}-{version}",
        event_type=m.EventType.CIVIL_STATUS_CHANGED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        occurred_at=AT,
        applied_at=AT,
    )


def write(settings: Settings, group: str, batch: list[Consumed]) -> WriteResult:
    async def run() -> WriteResult:
        db = Database(settings.postgres)
        try:
            return await CitizenStore(db, group).write(batch)
        finally:
            await db.close()

    return asyncio.run(run())


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def test_a_redelivered_batch_is_skipped_and_offsets_move_with_the_rows(
    settings: Settings,
) -> None:
    pin = "079190000001"
    batch = [
        Consumed(TOPIC, 0, 10, update(pin, 1, "Lê Thị Hoa")),
        Consumed(TOPIC, 0, 11, None),  # dead-lettered: consumed, nothing to write
        Consumed(TOPIC, 2, 5, update(pin, 2, "Lê Thị Hoà")),
    ]
    assert write(settings, "g1", batch) == WriteResult(written=3, skipped=0)
    assert write(settings, "g1", batch) == WriteResult(written=0, skipped=3)
    offsets = rows(
        settings,
        "SELECT partition, next_offset FROM store_writer_offsets"
        " WHERE group_id = 'g1' AND topic = %s ORDER BY 1",
        TOPIC,
    )
    assert offsets == [(0, 12), (2, 6)]
    history = rows(settings, "SELECT version FROM citizen_history WHERE pin = %s", pin)
    assert sorted(v for (v,) in history) == [1, 2]
    assert rows(settings, "SELECT version, full_name FROM citizens WHERE pin = %s", pin) == [
        (2, "Lê Thị Hoà")
    ]


def test_a_partly_applied_batch_writes_only_the_unseen_part(settings: Settings) -> None:
    pin = "079190000002"
    write(settings, "g2", [Consumed(TOPIC, 1, 0, update(pin, 1, "Phạm Văn An"))])
    result = write(
        settings,
        "g2",
        [
            Consumed(TOPIC, 1, 0, update(pin, 1, "Phạm Văn An")),
            Consumed(TOPIC, 1, 1, update(pin, 2, "Phạm Văn Ân")),
        ],
    )
    assert result == WriteResult(written=1, skipped=1)
    assert rows(settings, "SELECT version FROM citizens WHERE pin = %s", pin) == [(2,)]


def test_an_older_version_never_overwrites_a_newer_one(settings: Settings) -> None:
    # A stale writer (or a group reset) sends version 1 after version 2 was stored.
    pin = "079190000003"
    write(settings, "g3", [Consumed(TOPIC, 3, 0, update(pin, 2, "Đỗ Minh Khoa"))])
    write(settings, "g4", [Consumed(TOPIC, 3, 0, update(pin, 1, "Do Minh Khoa"))])
    assert rows(settings, "SELECT version, full_name FROM citizens WHERE pin = %s", pin) == [
        (2, "Đỗ Minh Khoa")
    ]
