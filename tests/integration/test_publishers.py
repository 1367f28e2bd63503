"""The publisher directory on a real PostgreSQL: the commands change it, the validator's
reader (`PostgresPublisherDirectory`) sees every key with its window, rotation keeps the old
key usable until its window ends, revocation, and one audit row per change."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from popsync import cli
from popsync.adapters.postgres.database import Database
from popsync.adapters.postgres.publishers import PostgresPublisherDirectory
from popsync.contract import models as m
from popsync.dev.stack import EmbeddedStack, settings_env
from popsync.ops import failures
from popsync.ops import publishers as ops
from popsync.ops.provision import migrate
from popsync.settings import Settings
from popsync.trust.identity import Publisher, PublisherKey
from popsync.trust.signing import load_signer

pytestmark = pytest.mark.integration

WHO = "an.nguyen"


@pytest.fixture(scope="module")
def settings(stack: EmbeddedStack) -> Settings:
    settings = stack.settings_for("publishers")
    migrate(settings)
    migrate(settings)  # idempotent
    return settings


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def directory(settings: Settings) -> dict[str, tuple[PublisherKey, Publisher]]:
    async def read() -> dict[str, tuple[PublisherKey, Publisher]]:
        db = Database(settings.postgres)
        try:
            return await PostgresPublisherDirectory(db).keys()
        finally:
            await db.close()

    return asyncio.run(read())


def audit(settings: Settings, publisher_id: str) -> list[tuple[Any, ...]]:
    return rows(
        settings,
        "SELECT action, key_id, operator, detail FROM publisher_audit"
        " WHERE publisher_id = %s ORDER BY id",
        publisher_id,
    )


def add_publisher(settings: Settings, publisher_id: str, *provinces: str) -> None:
    request = ops.PublisherRequest(publisher_id, m.SourceRegistry.CIVIL_STATUS, provinces)
    assert ops.add_publisher(settings, request, WHO, out=io.StringIO(), err=io.StringIO()) == 0


def add_key(settings: Settings, request: ops.KeyRequest) -> int:
    return ops.add_key(settings, request, WHO, out=io.StringIO(), err=io.StringIO())


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_publishers_and_keys_reach_the_validators_directory(
    settings: Settings, tmp_path: Path
) -> None:
    out = io.StringIO()
    request = ops.PublisherRequest(
        "cs-79", m.SourceRegistry.CIVIL_STATUS, ["079", "74"], ["DEATH_REGISTERED"]
    )
    assert ops.add_publisher(settings, request, WHO, out=out, err=out) == 0
    file_key = tmp_path / "cs-79-a.key"
    assert ops.generate_key("cs-79", "cs-79-a", file_key, out=out) == 0
    assert add_key(settings, ops.KeyRequest("cs-79", key_file=file_key)) == 0
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2027, 1, 1, tzinfo=UTC)
    raw = bytes(range(32))
    window = ops.KeyRequest(
        "cs-79", public_key=b64(raw), key_id="cs-79-b", valid_from=start, valid_until=end
    )
    assert add_key(settings, window) == 0

    keys = directory(settings)
    a, publisher = keys["cs-79-a"]
    assert a.public_key == load_signer(file_key).public_key
    assert (a.valid_until, a.revoked_at) == (None, None)
    assert publisher == Publisher(
        "cs-79",
        m.SourceRegistry.CIVIL_STATUS,
        frozenset({"79", "74"}),
        frozenset({m.EventType.DEATH_REGISTERED}),
    )
    b, same = keys["cs-79-b"]
    assert same is publisher
    assert (b.public_key, b.valid_from, b.valid_until) == (raw, start, end)
    assert b.usable_at(start) and not b.usable_at(end)

    assert [(action, key) for action, key, _, _ in audit(settings, "cs-79")] == [
        ("publisher.add", None),
        ("key.add", "cs-79-a"),
        ("key.add", "cs-79-b"),
    ]
    assert {who for _, _, who, _ in audit(settings, "cs-79")} == {WHO}
    seed = json.loads(file_key.read_text())["ed25519_seed"]
    assert seed not in out.getvalue()
    assert seed not in json.dumps([detail for *_, detail in audit(settings, "cs-79")])


def test_refusals_change_nothing_and_write_no_audit(settings: Settings) -> None:
    add_publisher(settings, "cs-01", "01")
    before = audit(settings, "cs-01")
    err = io.StringIO()
    again = ops.PublisherRequest("cs-01", m.SourceRegistry.CIVIL_STATUS, ["01"])
    assert ops.add_publisher(settings, again, WHO, out=io.StringIO(), err=err) == 1
    key = ops.KeyRequest("nobody", public_key=b64(bytes(32)))
    assert add_key(settings, key) == failures.EXIT_REFUSED
    other_kind = ops.PublisherRequest(
        "id-01", m.SourceRegistry.ID_CARD, ["01"], ["BIRTH_REGISTERED"]
    )
    with pytest.raises(failures.UsageError, match="ID_CARD is not the authority"):
        ops.add_publisher(settings, other_kind, WHO, out=io.StringIO(), err=err)
    assert ops.revoke_key(settings, "no-such-key", WHO, out=io.StringIO(), err=err) == 1
    assert ops.show_publisher(settings, "nobody", out=io.StringIO(), err=err) == 1
    assert "publisher 'cs-01' exists already" in err.getvalue()
    assert audit(settings, "cs-01") == before
    assert rows(settings, "SELECT 1 FROM publishers WHERE publisher_id = 'id-01'") == []


def test_rotation_keeps_the_old_key_usable_until_its_window_ends(
    settings: Settings, tmp_path: Path
) -> None:
    add_publisher(settings, "cs-48", "48")
    old = ops.KeyRequest("cs-48", public_key=b64(bytes(32)), key_id="cs-48-old")
    assert add_key(settings, old) == 0
    out = io.StringIO()
    new_file = tmp_path / "cs-48-new.key"
    cut = datetime.now(UTC) + timedelta(days=7)
    assert ops.rotate_key(settings, "cs-48", new_file, WHO, cut, out=out, err=out) == 0

    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    signer = load_signer(new_file)
    keys = directory(settings)
    new, _ = keys[signer.key_id]
    assert new.public_key == signer.public_key
    before_cut = cut - timedelta(seconds=1)
    old_key, _ = keys["cs-48-old"]
    assert old_key.valid_until == cut
    assert old_key.usable_at(before_cut) and new.usable_at(before_cut)
    assert not old_key.usable_at(cut) and new.usable_at(cut)
    assert json.loads(new_file.read_text())["ed25519_seed"] not in out.getvalue()

    # A key id that is taken: nothing registered, and no key file left of it.
    taken = tmp_path / "cs-48-taken.key"
    refused = ops.rotate_key(
        settings, "cs-48", taken, WHO, None, "cs-48-old", out=out, err=io.StringIO()
    )
    assert refused == failures.EXIT_REFUSED
    assert not taken.exists()
    # A later --old-valid-until never lengthens the old key's window.
    later = tmp_path / "cs-48-later.key"
    until = cut + timedelta(days=30)
    assert ops.rotate_key(settings, "cs-48", later, WHO, until, "l", out=out, err=out) == 0
    assert directory(settings)["cs-48-old"][0].valid_until == cut

    actions = [action for action, *_ in audit(settings, "cs-48")]
    assert actions == ["publisher.add", "key.add", "key.rotate", "key.rotate"]
    *_, detail = audit(settings, "cs-48")[2]
    assert detail["old_keys"] == {"cs-48-old": cut.isoformat()}


def test_revocation_of_a_key_and_of_a_publisher(settings: Settings) -> None:
    add_publisher(settings, "cs-31", "31")
    for kid in ("cs-31-a", "cs-31-b", "cs-31-c"):
        key = ops.KeyRequest("cs-31", public_key=b64(bytes(32)), key_id=kid)
        assert add_key(settings, key) == 0
    out, err = io.StringIO(), io.StringIO()
    assert ops.revoke_key(settings, "cs-31-a", WHO, out=out, err=err) == 0
    assert ops.revoke_key(settings, "cs-31-a", WHO, out=out, err=err) == 1
    assert "was revoked at" in err.getvalue()
    first = directory(settings)["cs-31-a"][0].revoked_at
    assert first is not None

    assert ops.revoke_publisher(settings, "cs-31", WHO, out=out, err=err) == 0
    assert "its keys from now: cs-31-b, cs-31-c" in out.getvalue()
    keys = directory(settings)
    assert keys["cs-31-a"][0].revoked_at == first  # its own revocation kept
    now = datetime.now(UTC)
    for kid in ("cs-31-a", "cs-31-b", "cs-31-c"):
        revoked, publisher = keys[kid]
        assert not revoked.usable_at(now)
        assert publisher.revoked_at is not None
    assert ops.revoke_publisher(settings, "cs-31", WHO, out=out, err=err) == 1
    late = ops.KeyRequest("cs-31", public_key=b64(bytes(32)), key_id="cs-31-d")
    assert add_key(settings, late) == 1

    assert [(a, k) for a, k, _, _ in audit(settings, "cs-31")] == [
        ("publisher.add", None),
        ("key.add", "cs-31-a"),
        ("key.add", "cs-31-b"),
        ("key.add", "cs-31-c"),
        ("key.revoke", "cs-31-a"),
        ("publisher.revoke", None),
    ]
    assert audit(settings, "cs-31")[-1][3] == {"keys_revoked": ["cs-31-b", "cs-31-c"]}


def test_the_command_line_lists_and_shows_the_directory(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("USER", "ops.tester")
    add = ["publishers", "add", "rs-79", "--kind", "residence", "--province", "79"]
    assert cli.main([*add, "--operator", WHO]) == 0
    key_file = tmp_path / "rs-79.key"
    rotate = ["keys", "rotate", "--publisher", "rs-79", "--output", str(key_file)]
    assert cli.main(rotate) == 0  # the operator: $USER
    assert cli.main(["publishers", "show", "rs-79"]) == 0
    assert cli.main(["publishers", "list"]) == 0
    assert cli.main(["publishers", "show", "nobody"]) == 1
    bad = ["publishers", "add", "rs-99", "--kind", "residence", "--province", "99"]
    assert cli.main(bad) == 2
    captured = capsys.readouterr()
    seed = json.loads(key_file.read_text())["ed25519_seed"]
    assert seed not in captured.out + captured.err
    signer = load_signer(key_file)
    assert f"key {signer.key_id}  usable  " in captured.out
    assert "rs-79  residence  provinces 79  active" in captured.out
    assert "popsync: unknown province code '99'" in captured.err
    assert "popsync: no publisher 'nobody'" in captured.err
