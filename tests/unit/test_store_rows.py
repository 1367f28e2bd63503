"""The store writer's rows of a batch: one per key, as row-by-row upserts would leave them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from popsync.adapters.store import (
    _CITIZEN_COLUMNS,
    _CONFLICT_COLUMNS,
    _HISTORY_COLUMNS,
    _batch_rows,
)
from popsync.contract import models as m

AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
PIN = "079190000001"


def update(version: int, name: str, pin: str = PIN) -> m.CitizenUpdate:
    return m.CitizenUpdate(
        pin=pin,
        version=version,
        snapshot=m.CitizenSnapshot(pin=pin, full_name=name, birth_date=date(1990, 5, 17)),
        changed_fields=["full_name", "birth_date"],
        event_id=f"event-{version}-{name}",
        event_type=m.EventType.CIVIL_STATUS_CHANGED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        occurred_at=AT,
        applied_at=AT,
    )


def conflict(event_id: str, message: str, seconds: int = 0) -> m.MergeConflict:
    return m.MergeConflict(
        pin=PIN,
        event_id=event_id,
        event_type=m.EventType.DIVORCE_RECORDED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        conflict_code="NOT_MARRIED",
        message=message,
        resolved=message == "resolved",
        occurred_at=AT,
        detected_at=AT + timedelta(seconds=seconds),
    )


def test_rows_match_the_staged_columns() -> None:
    rows = _batch_rows([update(1, "An"), conflict("e", "open")])
    assert [len(r) for r in rows.citizens] == [len(_CITIZEN_COLUMNS)]
    assert [len(r) for r in rows.history] == [len(_HISTORY_COLUMNS)]
    assert [len(r) for r in rows.conflicts] == [len(_CONFLICT_COLUMNS)]


def test_history_changes_are_the_json_values_of_the_changed_fields() -> None:
    (history,) = _batch_rows([update(1, "An")]).history
    changes = history[list(_HISTORY_COLUMNS).index("changes")]
    assert changes.obj == {"full_name": "An", "birth_date": "1990-05-17"}


def test_each_snapshot_is_dumped_once(monkeypatch: pytest.MonkeyPatch) -> None:
    dumps: list[str] = []
    original = m.CitizenSnapshot.model_dump

    def counting(self: m.CitizenSnapshot, **kwargs: Any) -> dict[str, Any]:
        dumps.append(self.pin)
        return original(self, **kwargs)

    monkeypatch.setattr(m.CitizenSnapshot, "model_dump", counting)
    _batch_rows([update(1, "An", pin) for pin in ("079190000001", "079190000002")])
    assert sorted(dumps) == ["079190000001", "079190000002"]


def test_a_repeated_version_keeps_its_first_record() -> None:
    rows = _batch_rows([update(1, "first"), update(1, "again")])
    assert [r[2] for r in rows.history] == ["event-1-first"]
    assert [r[2] for r in rows.citizens] == ["first"]


def test_the_citizen_row_is_the_highest_version() -> None:
    rows = _batch_rows([update(2, "two"), update(3, "three"), update(1, "one")])
    assert sorted(r[1] for r in rows.history) == [1, 2, 3]
    assert [(r[1], r[2]) for r in rows.citizens] == [(3, "three")]


def test_the_newest_conflict_record_wins_the_last_on_a_tie() -> None:
    rows = _batch_rows(
        [
            conflict("a", "open"),
            conflict("a", "resolved"),  # same time, later: wins
            conflict("b", "resolved", seconds=5),
            conflict("b", "open", seconds=1),  # later but older: loses
        ]
    )
    assert sorted((r[1], r[5]) for r in rows.conflicts) == [("a", "resolved"), ("b", "resolved")]
