"""The synchronizer's transaction on a real PostgreSQL: the central store's rows and the
citizens' merged states together, each write idempotent."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from popsync.adapters.postgres import citizens, sync_state
from popsync.adapters.postgres.citizens import StoreRecord
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.sync_state import StoredState, SyncStateStore
from popsync.contract import models as m
from popsync.dev.stack import EmbeddedStack
from popsync.ops.provision import migrate
from popsync.settings import Settings

pytestmark = pytest.mark.integration

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


def write(
    settings: Settings,
    records: list[StoreRecord],
    states: dict[str, StoredState] | None = None,
) -> None:
    """One synchronizer save: the states and the store's rows, in one transaction."""

    async def run() -> None:
        db = Database(settings.postgres)
        try:
            await SyncStateStore(db, fenced=False).save(states or {}, records)
        finally:
            await db.close()

    asyncio.run(run())


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def test_a_batch_written_twice_changes_nothing_the_first_wrote(settings: Settings) -> None:
    # A crash between the save and the offsets' commit: the batch merges to the same
    # versions again (a re-emit) or to nothing (duplicates); either way it is written once.
    pin = "079190000001"
    batch: list[StoreRecord] = [update(pin, 1, "Lê Thị Hoa"), update(pin, 2, "Lê Thị Hoà")]
    state = StoredState(2, [b"one", b"two"], ["e1", "e2"], b"{}")
    write(settings, batch, {pin: state})
    write(settings, batch, {pin: state})
    history = rows(settings, "SELECT version FROM citizen_history WHERE pin = %s", pin)
    assert sorted(v for (v,) in history) == [1, 2]
    assert rows(settings, "SELECT version, full_name FROM citizens WHERE pin = %s", pin) == [
        (2, "Lê Thị Hoà")
    ]
    assert rows(settings, "SELECT version FROM sync_citizen_state WHERE pin = %s", pin) == [(2,)]


def test_the_states_and_the_rows_commit_together_or_not_at_all(settings: Settings) -> None:
    # The last write of the transaction fails (a trigger on the conflicts here): the state
    # and the rows written before it in the same transaction are rolled back with it.
    pin = "079190000002"
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused'; END $$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON citizen_conflicts"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    try:
        with pytest.raises(psycopg.errors.RaiseException):
            write(
                settings,
                [update(pin, 1, "Phạm Văn An"), conflict(pin, "death-1", resolved=False)],
                {pin: StoredState(1, [b"one"], ["e1"], b"{}")},
            )
    finally:
        with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
            conn.execute("DROP TRIGGER refuse ON citizen_conflicts; DROP FUNCTION refuse()")
    for table in ("sync_citizen_state", "citizens", "citizen_history"):
        assert rows(settings, f"SELECT 1 FROM {table} WHERE pin = %s", pin) == []  # noqa: S608
    # Retried, as the runtime retries it, it writes both.
    write(settings, [update(pin, 1, "Phạm Văn An")], {pin: StoredState(1, [b"one"], ["e1"], b"{}")})
    assert rows(settings, "SELECT version FROM citizens WHERE pin = %s", pin) == [(1,)]
    assert rows(settings, "SELECT version FROM sync_citizen_state WHERE pin = %s", pin) == [(1,)]


def test_an_older_version_never_overwrites_a_newer_one(settings: Settings) -> None:
    # A stale synchronizer (one that lost its partition mid-batch) writes version 1 after
    # version 2 was stored.
    pin = "079190000003"
    write(settings, [update(pin, 2, "Đỗ Minh Khoa")])
    write(settings, [update(pin, 1, "Do Minh Khoa")])
    assert rows(settings, "SELECT version, full_name FROM citizens WHERE pin = %s", pin) == [
        (2, "Đỗ Minh Khoa")
    ]


def conflict(pin: str, event_id: str, *, resolved: bool, seconds: int = 0) -> m.MergeConflict:
    return m.MergeConflict(
        pin=pin,
        event_id=event_id,
        event_type=m.EventType.DIVORCE_RECORDED,
        source_registry=m.SourceRegistry.CIVIL_STATUS,
        conflict_code="NOT_MARRIED",
        message="resolved" if resolved else "open",
        resolved=resolved,
        occurred_at=AT,
        detected_at=AT + timedelta(seconds=seconds),
    )


def test_a_version_twice_in_one_batch_is_written_once(settings: Settings) -> None:
    # A synchronizer re-emit can put the same (pin, version) twice in one batch.
    pin = "079190000004"
    first, again = update(pin, 1, "Vũ Thị Lan"), update(pin, 1, "Vũ Thị Lan")
    write(settings, [first, again])
    assert rows(settings, "SELECT version FROM citizen_history WHERE pin = %s", pin) == [(1,)]
    assert rows(settings, "SELECT version, full_name FROM citizens WHERE pin = %s", pin) == [
        (1, "Vũ Thị Lan")
    ]


def test_two_versions_of_a_citizen_in_one_batch(settings: Settings) -> None:
    pin = "079190000005"
    batch: list[StoreRecord] = [  # out of order: the higher version must still win
        update(pin, 2, "Trần Văn Bình"),
        update(pin, 1, "Tran Van Binh"),
    ]
    write(settings, batch)
    assert rows(settings, "SELECT version, full_name FROM citizens WHERE pin = %s", pin) == [
        (2, "Trần Văn Bình")
    ]
    history = rows(
        settings,
        "SELECT version, changes, written_at IS NOT NULL FROM citizen_history"
        " WHERE pin = %s ORDER BY version",
        pin,
    )
    assert history == [
        (1, {"full_name": "Tran Van Binh"}, True),
        (2, {"full_name": "Trần Văn Bình"}, True),
    ]


def test_a_conflict_and_its_resolution_in_one_batch_the_resolution_wins(
    settings: Settings,
) -> None:
    pin = "079190000006"
    batch: list[StoreRecord] = [
        conflict(pin, "divorce-1", resolved=False),
        conflict(pin, "divorce-1", resolved=True),  # same detected_at
        conflict(pin, "divorce-2", resolved=False),
    ]
    write(settings, batch)
    found = rows(
        settings,
        "SELECT event_id, message, resolved_at FROM citizen_conflicts WHERE pin = %s ORDER BY 1",
        pin,
    )
    assert found == [("divorce-1", "resolved", AT), ("divorce-2", "open", None)]
    # An older record written again later reopens nothing.
    write(settings, [conflict(pin, "divorce-1", resolved=False, seconds=-1)])
    assert rows(
        settings,
        "SELECT message FROM citizen_conflicts WHERE pin = %s AND event_id = %s",
        pin,
        "divorce-1",
    ) == [("resolved",)]


def test_a_big_batch_is_written_in_full(settings: Settings) -> None:
    pins = [f"0792100{i:05d}" for i in range(1000)]
    records: list[StoreRecord] = []
    for pin in pins:
        snapshot = m.CitizenSnapshot(
            pin=pin,
            full_name=f'Ngô \\ "Quyền"\t{pin}',  # characters COPY and JSON escape
            birth_date=date(1990, 5, 17),
            sex=m.Sex.F,
            permanent_residence=m.Address(
                province_code="79", commune_code="26734", address_line="12 Lê Lợi\nPhường 1"
            ),
            id_card=m.IdCard(card_number=pin, issue_date=date(2021, 3, 4), issuing_authority="C06"),
        )
        for version in (1, 2):
            records.append(
                update(pin, version, "").model_copy(
                    update={
                        "snapshot": snapshot,
                        "changed_fields": ["full_name", "birth_date", "permanent_residence"],
                    }
                )
            )
        records.append(conflict(pin, f"death-{pin}", resolved=False))
    write(settings, records)

    counts = rows(
        settings,
        "SELECT (SELECT count(*) FROM citizens WHERE pin LIKE '0792100%%' AND version = 2),"
        " (SELECT count(*) FROM citizen_history WHERE pin LIKE '0792100%%'"
        "   AND written_at IS NOT NULL),"
        " (SELECT count(*) FROM citizen_conflicts WHERE pin LIKE '0792100%%')",
    )
    assert counts == [(1000, 2000, 1000)]
    pin = pins[-1]
    expected = records[-2]
    assert isinstance(expected, m.CitizenUpdate)
    dumped = expected.snapshot.model_dump(mode="json")
    citizen = rows(
        settings,
        "SELECT full_name, birth_date, sex, permanent_province, permanent_commune,"
        " id_card_number, snapshot, last_event_id, last_event_at FROM citizens WHERE pin = %s",
        pin,
    )
    assert citizen == [
        (
            expected.snapshot.full_name,
            date(1990, 5, 17),
            "F",
            "79",
            "26734",
            pin,
            dumped,
            f"event-{pin}-2",
            AT,
        )
    ]
    history = rows(
        settings,
        "SELECT event_type, source_registry, changed_fields, changes, occurred_at, applied_at"
        " FROM citizen_history WHERE pin = %s AND version = 2",
        pin,
    )
    assert history == [
        (
            "CIVIL_STATUS_CHANGED",
            "CIVIL_STATUS",
            ["full_name", "birth_date", "permanent_residence"],
            {name: dumped[name] for name in expected.changed_fields},
            AT,
            AT,
        )
    ]


def test_batches_on_one_connection_do_not_carry_rows_over(settings: Settings) -> None:
    # The staging tables live as long as the connection; each batch must start empty.
    first, second = "079190000007", "079190000008"

    async def run() -> None:
        db = Database(settings.postgres)
        try:
            store = SyncStateStore(db, fenced=False)
            await store.save({}, [update(first, 1, "Hồ Văn Nam")])
            async with db.transaction() as cur:
                await cur.execute(b"DELETE FROM citizens WHERE pin = %s", (first,))
            await store.save({}, [update(second, 1, "Hồ Thị Mai")])
        finally:
            await db.close()

    asyncio.run(run())
    found = rows(settings, "SELECT pin FROM citizens WHERE pin IN (%s, %s)", first, second)
    assert found == [(second,)]


def test_sync_state_only_moves_forward(settings: Settings) -> None:
    pins = ["079190000009", "079190000010", "079190000011"]
    blob = bytes(range(256))  # every byte value, NUL and backslash included

    def state(version: int, events: list[bytes]) -> StoredState:
        ids = [f"e{i}" for i in range(len(events))]
        return StoredState(version, events, ids, b'{"fold": %d}' % version)

    def save(states: dict[str, StoredState]) -> None:
        async def run() -> None:
            db = Database(settings.postgres)
            try:
                await SyncStateStore(db).save(states)
            finally:
                await db.close()

        asyncio.run(run())

    def load(known: dict[str, int | None]) -> dict[str, StoredState]:
        async def run() -> dict[str, StoredState]:
            db = Database(settings.postgres)
            try:
                return await SyncStateStore(db).load(known)
            finally:
                await db.close()

        return asyncio.run(run())

    save({pins[0]: state(2, [b"a", blob]), pins[1]: state(1, [])})
    save(
        {pins[0]: state(1, [b"stale"]), pins[1]: state(2, [b"b", b"c"]), pins[2]: state(1, [b"d"])}
    )
    save({pins[0]: state(2, [b"same version"])})  # an equal version changes nothing either
    assert load(dict.fromkeys(pins)) == {
        pins[0]: state(2, [b"a", blob]),
        pins[1]: state(2, [b"b", b"c"]),
        pins[2]: state(1, [b"d"]),
    }
    # Only the version of what the caller holds already; nothing for a pin never saved.
    assert load({pins[0]: 2, pins[1]: 1, "079190000099": None}) == {
        pins[0]: StoredState(2, None),
        pins[1]: state(2, [b"b", b"c"]),
    }


def test_sync_state_rows_of_an_earlier_release_read_back_without_a_fold(
    settings: Settings,
) -> None:
    pin = "079190000012"
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        conn.execute(
            "INSERT INTO sync_citizen_state (pin, version, events) VALUES (%s, 1, %s)",
            (pin, [b"x"]),
        )

    async def run() -> dict[str, StoredState]:
        db = Database(settings.postgres)
        try:
            return await SyncStateStore(db).load({pin: None})
        finally:
            await db.close()

    assert asyncio.run(run()) == {pin: StoredState(1, [b"x"], None, None)}


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("citizens", citizens.CITIZEN_COLUMNS),
        ("citizen_history", citizens._HISTORY_COLUMNS),
        ("citizen_conflicts", citizens._CONFLICT_COLUMNS),
        ("sync_citizen_state", sync_state._SYNC_STATE_COLUMNS),
    ],
)
def test_the_binary_copy_types_are_the_schemas(
    settings: Settings, table: str, columns: dict[str, str]
) -> None:
    found = rows(
        settings,
        "SELECT a.attname, a.atttypid = c.type::regtype FROM pg_attribute a"
        " JOIN unnest(%s::text[], %s::text[]) AS c(name, type) ON a.attname = c.name"
        " WHERE a.attrelid = %s::regclass AND NOT a.attisdropped",
        list(columns),
        list(columns.values()),
        table,
    )
    assert sorted(found) == sorted((name, True) for name in columns)


def test_the_schema_adds_the_fold_columns_to_a_table_of_an_earlier_release(
    stack: EmbeddedStack,
) -> None:
    settings = stack.settings_for("storetest-earlier")
    dsn = settings.postgres.dsn.get_secret_value()
    with psycopg.connect(dsn) as conn:  # the table as the first release made it
        conn.execute(
            "CREATE TABLE sync_citizen_state (pin text PRIMARY KEY, version bigint NOT NULL,"
            " events bytea[] NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO sync_citizen_state (pin, version, events) VALUES ('p', 1, '{}')")
    migrate(settings)
    migrate(settings)  # and again: idempotent
    found = rows(settings, "SELECT pin, version, event_ids, fold FROM sync_citizen_state")
    assert found == [("p", 1, None, None)]
    assert _fillfactor(settings, "sync_citizen_state") == ["fillfactor=75"]


def test_the_rewritten_tables_leave_room_for_updates(settings: Settings) -> None:
    migrate(settings)  # a second time: nothing is added twice
    assert _fillfactor(settings, "sync_citizen_state") == ["fillfactor=75"]
    assert _fillfactor(settings, "citizens") == ["fillfactor=75"]
    assert _fillfactor(settings, "citizen_history") is None  # appended to, never updated


def test_the_schema_keeps_an_operators_own_fillfactor(stack: EmbeddedStack) -> None:
    settings = stack.settings_for("storetest-tuned")
    migrate(settings)
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        conn.execute("ALTER TABLE citizens SET (fillfactor = 60)")
    migrate(settings)
    assert _fillfactor(settings, "citizens") == ["fillfactor=60"]


def _fillfactor(settings: Settings, table: str) -> list[str] | None:
    query = "SELECT reloptions FROM pg_class WHERE oid = %s::regclass"
    ((options,),) = rows(settings, query, table)
    return options
