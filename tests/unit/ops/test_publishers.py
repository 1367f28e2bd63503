"""The publisher directory's commands without a database: what is accepted, what is refused
and how, what is printed (never a private key), the key files."""

from __future__ import annotations

import base64
import io
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from popsync import cli
from popsync.adapters.postgres.publishers import (
    InvalidEntry,
    PublisherEntry,
    authorized_types,
    public_key_bytes,
    publisher_entry,
)
from popsync.contract import models as m
from popsync.ops import failures
from popsync.ops.publishers import (
    KeyRequest,
    default_key_id,
    describe_key,
    describe_publisher,
    generate_key,
    kind_name,
    kind_of,
    new_key,
)
from popsync.trust.identity import Publisher, PublisherKey
from popsync.trust.signing import Signer, load_signer

E = m.EventType
NOW = datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
CIVIL = m.SourceRegistry.CIVIL_STATUS


def test_a_publisher_may_publish_every_type_its_kind_is_the_authority_for_by_default() -> None:
    entry = publisher_entry("civil-status-79", CIVIL, ["79"])
    assert entry.event_types == {
        E.BIRTH_REGISTERED,
        E.DEATH_REGISTERED,
        E.DEATH_ANNULLED,
        E.MARRIAGE_REGISTERED,
        E.DIVORCE_RECORDED,
        E.CIVIL_STATUS_CHANGED,
    }
    for sector in (m.SourceRegistry.SOCIAL_INSURANCE, m.SourceRegistry.CIVIL_SERVANT):
        assert authorized_types(sector) == {E.SECTOR_RECORD_REGISTERED}
    assert authorized_types(m.SourceRegistry.UNKNOWN) == frozenset()


def test_provinces_are_stored_as_two_digit_admin_codes_legacy_ones_kept() -> None:
    entry = publisher_entry("cs-south", CIVIL, ["079", " 74 ", "79", "02"])
    assert entry.provinces == {"79", "74", "02"}  # 02 (Hà Giang) is a pre-merger code


@pytest.mark.parametrize(
    ("provinces", "message"),
    [
        (["99"], "unknown province code '99'"),
        (["179"], "unknown province code '179'"),
        (["7"], "unknown province code '7'"),
        ([], "at least one province"),
    ],
)
def test_unknown_provinces_are_refused(provinces: list[str], message: str) -> None:
    with pytest.raises(InvalidEntry, match=message):
        publisher_entry("cs", CIVIL, provinces)


def test_an_event_type_the_kind_is_not_the_authority_for_is_refused_in_one_line() -> None:
    entry = publisher_entry("cs", CIVIL, ["79"], [E.DEATH_REGISTERED])
    assert entry.event_types == {E.DEATH_REGISTERED}
    with pytest.raises(InvalidEntry) as refused:
        publisher_entry("cs", CIVIL, ["79"], [E.DEATH_REGISTERED, E.ID_CARD_ISSUED])
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith("CIVIL_STATUS is not the authority for ID_CARD_ISSUED; it may publish")
    with pytest.raises(InvalidEntry, match="is not the authority for UNKNOWN"):
        publisher_entry("cs", CIVIL, ["79"], [E.UNKNOWN])


@pytest.mark.parametrize("publisher_id", ["", "-x", "a b", "civil/79", "x" * 129, "tỉnh-79"])
def test_ids_are_short_plain_ascii(publisher_id: str) -> None:
    with pytest.raises(InvalidEntry, match="publisher id"):
        publisher_entry(publisher_id, CIVIL, ["79"])


def test_a_public_key_is_32_bytes() -> None:
    assert public_key_bytes(bytes(32)) == bytes(32)
    with pytest.raises(InvalidEntry, match="32 bytes, this one 31"):
        public_key_bytes(bytes(31))


def test_kinds_are_spelt_as_on_the_command_line() -> None:
    for kind in m.SourceRegistry:
        assert kind_of(kind_name(kind)) is kind
    assert kind_name(m.SourceRegistry.ID_CARD) == "id-card"


# --------------------------------------------------------------------------------- keys


def signer(tmp_path: Path, publisher_id: str = "cs-79", key_id: str = "cs-79-1") -> Path:
    path = tmp_path / f"{key_id}.key"
    Signer.generate(publisher_id, key_id).save(path)
    return path


def test_a_key_from_a_key_file_is_its_public_half_and_its_key_id(tmp_path: Path) -> None:
    path = signer(tmp_path)
    key = new_key(KeyRequest("cs-79", key_file=path), NOW)
    assert key.key_id == "cs-79-1"
    assert key.public_key == load_signer(path).public_key
    assert (key.valid_from, key.valid_until) == (None, None)  # from now, open-ended


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (KeyRequest("cs-74"), "a key of 'cs-79', not 'cs-74'"),
        (KeyRequest("cs-79", key_id="other"), "signs as key 'cs-79-1', not 'other'"),
    ],
)
def test_a_key_file_of_another_publisher_or_key_id_is_refused(
    tmp_path: Path, request_: KeyRequest, message: str
) -> None:
    path = signer(tmp_path)
    with pytest.raises(InvalidEntry, match=message):
        new_key(KeyRequest(request_.publisher_id, key_file=path, key_id=request_.key_id), NOW)


def test_a_base64_key_gets_a_default_id_and_its_window_is_checked() -> None:
    encoded = base64.b64encode(bytes(range(32))).decode()
    key = new_key(KeyRequest("cs-79", public_key=encoded), NOW)
    assert key.key_id == "cs-79-20261206083000" == default_key_id("cs-79", NOW)
    assert key.public_key == bytes(range(32))
    later = NOW + timedelta(days=1)
    with pytest.raises(InvalidEntry, match="--valid-until must come after"):
        new_key(KeyRequest("cs-79", public_key=encoded, valid_until=NOW), NOW)
    with pytest.raises(InvalidEntry, match="--valid-until must come after"):
        new_key(KeyRequest("cs-79", public_key=encoded, valid_from=later, valid_until=later), NOW)


@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        ("not base64!", "not base64"),
        (base64.b64encode(bytes(33)).decode(), "32 bytes, this one 33"),
        (None, "give the key"),
    ],
)
def test_bad_public_keys_are_refused(public_key: str | None, message: str) -> None:
    with pytest.raises(InvalidEntry, match=message):
        new_key(KeyRequest("cs-79", public_key=public_key), NOW)


def test_generate_writes_a_0600_file_and_prints_only_the_public_key(tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "cs-79.key"
    assert generate_key("cs-79", None, path, out=out) == failures.EXIT_OK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = load_signer(path)
    seed = json.loads(path.read_text())["ed25519_seed"]
    printed = out.getvalue()
    assert seed not in printed
    assert base64.b64encode(written.public_key).decode() in printed
    assert written.key_id.startswith("cs-79-") and written.key_id in printed
    assert len(printed.splitlines()) == 2


def test_generate_never_overwrites_a_file(tmp_path: Path) -> None:
    path = signer(tmp_path)
    before = path.read_bytes()
    with pytest.raises(failures.UsageError, match="exists: a key file is never overwritten"):
        generate_key("cs-79", "cs-79-2", path, out=io.StringIO())
    assert path.read_bytes() == before


def test_generate_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.key"
    assert cli.main(["keys", "generate", "--publisher", "cs-79", "--output", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli.main(["keys", "generate", "--publisher", "cs-79", "--output", str(path)]) == 2
    bad = ["keys", "generate", "--publisher", "cs 79", "--output", str(tmp_path / "x")]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err
    assert "never overwritten" in err and "publisher id 'cs 79'" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- output


def test_each_key_line_says_its_window_and_state_at_the_moment() -> None:
    key = PublisherKey("k1", "cs-79", bytes(32), NOW, NOW + timedelta(days=30))
    b64 = base64.b64encode(bytes(32)).decode()
    assert describe_key(key, NOW) == (
        f"key k1  usable  valid 2026-12-06T08:30:00Z .. 2027-01-05T08:30:00Z  ed25519 {b64}"
    )
    assert "  expired  " in describe_key(key, NOW + timedelta(days=30))
    assert "  not yet valid  " in describe_key(key, NOW - timedelta(seconds=1))
    revoked = PublisherKey("k1", "cs-79", bytes(32), NOW, None, NOW + timedelta(hours=1))
    assert " .. open  " in describe_key(revoked, NOW)
    assert "  revoked 2026-12-06T09:30:00Z  " in describe_key(revoked, NOW + timedelta(hours=1))


def test_a_publisher_line_counts_its_usable_keys() -> None:
    publisher = Publisher("cs-79", CIVIL, frozenset({"79", "74"}), frozenset({E.DEATH_REGISTERED}))
    keys = (
        PublisherKey("k1", "cs-79", bytes(32), NOW - timedelta(days=1), None),
        PublisherKey("k2", "cs-79", bytes(32), NOW - timedelta(days=1), NOW),
    )
    line = describe_publisher(PublisherEntry(publisher, NOW, keys), NOW)
    assert line == (
        "cs-79  civil-status  provinces 74,79  active  since 2026-12-06T08:30:00Z  "
        "keys 2 (1 usable)  event types DEATH_REGISTERED"
    )
