"""The store's rows of a batch: one per key, as row-by-row upserts would leave them."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from psycopg.types.json import Jsonb, JsonbBinaryDumper

from popsync.adapters.postgres import citizens
from popsync.adapters.postgres.citizens import (
    _CONFLICT_COLUMNS,
    _HISTORY_COLUMNS,
    CITIZEN_COLUMNS,
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


def sent(param: Jsonb) -> Any:
    """The JSON psycopg sends for a jsonb parameter of a binary COPY, parsed."""
    data = bytes(JsonbBinaryDumper(Jsonb).dump(param) or b"")
    assert data[:1] == b"\x01"  # jsonb binary format version
    return json.loads(data[1:])


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
    assert [len(r) for r in rows.citizens] == [len(CITIZEN_COLUMNS)]
    assert [len(r) for r in rows.history] == [len(_HISTORY_COLUMNS)]
    assert [len(r) for r in rows.conflicts] == [len(_CONFLICT_COLUMNS)]


def test_history_changes_are_the_json_values_of_the_changed_fields() -> None:
    (history,) = _batch_rows([update(1, "An")]).history
    changes = history[list(_HISTORY_COLUMNS).index("changes")]
    assert sent(changes) == {"full_name": "An", "birth_date": "1990-05-17"}


def test_each_snapshot_is_serialized_once_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole snapshot once for its citizens row (none for a superseded version), the
    changed fields once for its history row, and never through a Python dict."""
    dumps: list[tuple[str | None, bool]] = []
    original = citizens._snapshot_jsonb

    def counting(snapshot: m.CitizenSnapshot, include: set[str] | None = None) -> Jsonb:
        dumps.append((snapshot.full_name, include is None))
        return original(snapshot, include)

    def no_dict(self: m.CitizenSnapshot, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("model_dump")

    monkeypatch.setattr(citizens, "_snapshot_jsonb", counting)
    monkeypatch.setattr(m.CitizenSnapshot, "model_dump", no_dict)
    _batch_rows([update(1, "An"), update(2, "Anh"), update(1, "Bao", "079190000002")])
    assert sorted(dumps) == [
        ("An", False),  # superseded by version 2: its history row only
        ("Anh", False),
        ("Anh", True),
        ("Bao", False),
        ("Bao", True),
    ]


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


def test_the_jsonb_columns_are_the_json_mode_dump_of_the_snapshot() -> None:
    home = m.Address(province_code="79", commune_code="26734", address_line="12 Lê Lợi, Bến Thành")
    moved = m.Address(
        province_code="01", legacy_province_code="28", commune_code="00004", address_line="Ngõ 5"
    )
    card = m.IdCard(
        card_number=PIN, issue_date=date(2021, 3, 4), issuing_authority="Cục Cảnh sát QLHC"
    )
    full = m.CitizenSnapshot(
        pin=PIN,
        full_name="Nguyễn Thị Ánh",
        birth_date=date(1990, 5, 17),
        sex=m.Sex.F,
        ethnicity="Kinh",
        nationality="VN",
        birthplace_province="79",
        marital_status=m.MaritalStatus.MARRIED,
        spouse_pin="079190000002",
        life_status=m.LifeStatus.DECEASED,
        death_date=date(2024, 1, 1),
        permanent_residence=home,
        temporary_residence=moved,
        id_card=card,  # expiry_date None
    )
    bare = m.CitizenSnapshot(pin="079190000003")  # every optional field None, enum defaults
    changes = [
        (full, ["id_card", "temporary_residence", "sex", "death_date", "marital_status"]),
        (full, ["ethnicity"]),
        (bare, ["full_name", "birth_date", "permanent_residence", "life_status"]),  # nulls
        (bare, []),
    ]
    for snapshot, changed in changes:
        record = update(1, "", snapshot.pin)
        rows = _batch_rows(
            [record.model_copy(update={"snapshot": snapshot, "changed_fields": changed})]
        )
        (citizen,) = rows.citizens
        (history,) = rows.history
        dumped = snapshot.model_dump(mode="json")
        assert sent(citizen[list(CITIZEN_COLUMNS).index("snapshot")]) == dumped
        assert sent(history[list(_HISTORY_COLUMNS).index("changes")]) == {
            name: dumped[name] for name in changed
        }
        assert history[list(_HISTORY_COLUMNS).index("changed_fields")] == changed
