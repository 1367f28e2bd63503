"""The real pipeline: publisher → validator → synchronizer → PostgreSQL (and its updates)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.contract.json_form import event_to_json
from popsync.dev.publishers import dev_signer
from popsync.dev.stack import settings_env
from popsync.domain.pin import make_pin
from popsync.ops.publish import Publisher
from popsync.settings import Settings
from tests.builders import (
    birth,
    citizen,
    death,
    divorce,
    marriage,
    move,
    publish,
    read_dead_letters,
)
from tests.polling import Query, eventually

pytestmark = pytest.mark.integration

_serials = itertools.count(100)


def new_pin(birth_year: int = 1990, sex: str = "F") -> str:
    return make_pin("079", "F" if sex == "F" else "M", birth_year, next(_serials)).value


def test_birth_creates_a_citizen(publisher: Publisher, query: Query) -> None:
    pin = new_pin()
    publish(publisher, birth(pin))
    row = eventually(lambda: citizen(query, pin, 1))
    assert row is not None
    version, name, marital, life, _, snapshot = row
    assert (version, name, marital, life) == (1, "Trần Thị Bình", "SINGLE", "ALIVE")
    assert snapshot["birth_date"] == "1990-04-05"
    history = query(
        "SELECT version, event_type, source_registry, changed_fields"
        " FROM citizen_history WHERE pin = %s",
        pin,
    )
    assert history[0][:3] == (1, "BIRTH_REGISTERED", "CIVIL_STATUS")
    assert "full_name" in history[0][3]


def test_marriage_updates_marital_status(publisher: Publisher, query: Query) -> None:
    pin = new_pin()
    publish(publisher, birth(pin), marriage(pin, date(2015, 6, 1)))
    row = eventually(lambda: citizen(query, pin, 2))
    assert row is not None and row[2] == "MARRIED"


def test_move_updates_the_address_and_maps_legacy_province(
    publisher: Publisher, query: Query
) -> None:
    pin = new_pin()
    publish(
        publisher,
        birth(pin),
        move(pin, date(2012, 1, 1)),
        move(pin, date(2020, 3, 1), province="74", commune="25747"),
    )
    row = eventually(lambda: citizen(query, pin, 3))
    assert row is not None
    residence = row[5]["permanent_residence"]
    assert row[4] == "79"  # Bình Dương (74) is part of TP. Hồ Chí Minh since 2025
    assert residence["legacy_province_code"] == "74"
    assert residence["commune_code"] == "25747"


def test_death_marks_the_citizen_deceased_and_a_later_move_conflicts(
    publisher: Publisher, query: Query
) -> None:
    pin = new_pin(1950, "M")
    born = birth(pin).model_copy(
        update={
            "payload": birth(pin).payload.model_copy(
                update={"birth_date": date(1950, 2, 2), "sex": m.Sex.M, "full_name": "Phạm Văn Đức"}
            )
        }
    )
    publish(publisher, born, death(pin, date(2024, 8, 1)), move(pin, date(2024, 9, 1)))
    row = eventually(lambda: citizen(query, pin, 3))
    assert row is not None and row[3] == "DECEASED"
    assert row[5]["death_date"] == "2024-08-01"
    assert row[5]["permanent_residence"] is None
    conflicts = eventually(
        lambda: query("SELECT conflict_code, event_type FROM citizen_conflicts WHERE pin = %s", pin)
    )
    assert conflicts == [("SUBJECT_DECEASED", "PERMANENT_RESIDENCE_REGISTERED")]


def test_a_conflict_caused_by_arrival_order_is_resolved_when_the_missing_event_arrives(
    publisher: Publisher, query: Query
) -> None:
    pin = new_pin()
    publish(publisher, birth(pin), divorce(pin, date(2019, 3, 1)))  # the marriage is late
    opened = eventually(
        lambda: query(
            "SELECT conflict_code FROM citizen_conflicts WHERE pin = %s AND resolved_at IS NULL",
            pin,
        )
    )
    assert opened == [("NOT_MARRIED",)]
    publish(publisher, marriage(pin, date(2015, 6, 1)))
    row = eventually(lambda: citizen(query, pin, 3))
    assert row is not None and row[2] == "DIVORCED"
    resolved = eventually(
        lambda: query(
            "SELECT conflict_code FROM citizen_conflicts"
            " WHERE pin = %s AND resolved_at IS NOT NULL",
            pin,
        )
    )
    assert resolved == [("NOT_MARRIED",)]


def test_invalid_event_is_dead_lettered_and_the_rest_flow_on(
    publisher: Publisher, pipeline: Settings, query: Query
) -> None:
    good, bad = new_pin(), new_pin()
    invalid = birth(bad).model_copy(update={"source_province": "00"})  # no publisher speaks for it
    original = Codec(m.RegistryEvent).encode(invalid)
    publisher.send_raw(b"not-a-pin", b"\x00garbage")
    publish(publisher, invalid, birth(good))
    assert eventually(lambda: citizen(query, good, 1)) is not None
    letters = read_dead_letters(pipeline, wanted=2)
    by_reason = {letter.reason_code: letter for letter in letters}
    assert by_reason["PROVINCE_OUT_OF_SCOPE"].original_value == original
    assert by_reason["PROVINCE_OUT_OF_SCOPE"].original_key == bad.encode()
    assert by_reason["PROVINCE_OUT_OF_SCOPE"].stage == "validator"
    assert by_reason["PROVINCE_OUT_OF_SCOPE"].event_id == invalid.event_id
    assert by_reason["BAD_MAGIC"].original_value == b"\x00garbage"
    assert not query("SELECT 1 FROM citizens WHERE pin = %s", bad)


def test_duplicates_and_out_of_order_arrivals_converge(publisher: Publisher, query: Query) -> None:
    pin = new_pin()
    first, second = move(pin, date(2011, 1, 1), commune="26737"), move(pin, date(2019, 1, 1))
    born = birth(pin)
    publish(publisher, second, born, first, born, second)  # later move arrives first, twice
    row = eventually(lambda: citizen(query, pin, 3))
    assert row is not None
    time.sleep(2)  # give a wrongly applied duplicate the time to show up
    history = query("SELECT version FROM citizen_history WHERE pin = %s ORDER BY 1", pin)
    assert [v for (v,) in history] == [1, 2, 3]
    assert row[5]["permanent_residence"]["commune_code"] == "26734"


def test_publish_cli_reports_bad_lines_and_sends_good_ones(
    pipeline: Settings, query: Query, tmp_path: Path
) -> None:
    pin = new_pin()
    lines = [
        json.dumps(event_to_json(birth(pin)), ensure_ascii=False),
        "{not json",
        json.dumps({"event_type": "BIRTH_REGISTERED", "payload": {}}),
        json.dumps(event_to_json(move(new_pin(), date(2020, 1, 1)))),  # residence, not ours
    ]
    path = tmp_path / "births.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    key = tmp_path / "civil-status.key"  # the registry signs what it publishes
    dev_signer(m.SourceRegistry.CIVIL_STATUS).save(key)
    command = ["publish", "--source", "civil-status", "--signing-key", str(key), str(path)]
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "popsync.cli", *command],
        env={**os.environ, **settings_env(pipeline)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "published 1 events, 3 bad lines" in result.stdout
    assert f"{path}:2: NOT_JSON" in result.stderr
    assert f"{path}:3: CONTRACT_VIOLATION" in result.stderr
    assert f"{path}:4: SOURCE_MISMATCH" in result.stderr
    assert eventually(lambda: citizen(query, pin, 1)) is not None
