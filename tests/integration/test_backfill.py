"""`popsync backfill` on the real embedded broker and PostgreSQL: the stream's rules, signed
archives, dead letters, kill -9 and resume, and the hand-off to the stream."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.json_form import event_to_json
from popsync.dev.demo import expect, store_matches
from popsync.dev.publishers import dev_signer
from popsync.dev.simulate.generator import SimulatedMessage, simulate, write_avro_container
from popsync.dev.stack import EmbeddedStack, WorkerProcess, settings_env
from popsync.ops.publish import Publisher
from popsync.settings import WORKER_NAMES, Settings
from popsync.trust.archives import sign_archive, signature_path
from tests.builders import move, registry_event
from tests.polling import eventually
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

_names = itertools.count()
SKEW = timedelta(minutes=5)


def _settings(stack: EmbeddedStack, name: str) -> Settings:
    settings = stack.isolated_settings(f"backfill-{name}-{next(_names)}")
    stack.prepare(settings)
    return settings


def _sql(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(query.encode(), params).fetchall()


def _archives(
    directory: Path, messages: Sequence[SimulatedMessage], suffix: str = "avro"
) -> list[Path]:
    """One signed archive per registry, as each registry exports its own."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in m.SourceRegistry:
        mine = [msg for msg in messages if msg.event.source_registry is kind]
        if not mine or kind is m.SourceRegistry.UNKNOWN:
            continue
        path = directory / f"{kind.value.lower()}.{suffix}"
        if suffix == "avro":
            write_avro_container(mine, path)
        else:
            lines = (json.dumps(event_to_json(msg.event), ensure_ascii=False) for msg in mine)
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        sign_archive(path, dev_signer(kind))
        paths.append(path)
    return paths


def _backfill(
    settings: Settings, *args: str | Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "popsync", "backfill", "--no-progress", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _dead_letters(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _archivable(messages: Sequence[SimulatedMessage]) -> list[SimulatedMessage]:
    """The messages as an archive holds them: keyed by their subject (an archive has no
    message key of its own), and only those of a registry that can sign one."""
    return [
        replace(msg, key=msg.event.subject_pin.encode() if msg.event.subject_pin else None)
        for msg in messages
        if msg.event.source_registry is not m.SourceRegistry.UNKNOWN
    ]


@pytest.fixture(scope="module")
def stream() -> list[SimulatedMessage]:
    return _archivable(simulate(300, seed=2027, now=datetime.now(UTC)))


def test_an_archive_lands_as_the_stream_would_fold_it(
    stack: EmbeddedStack, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    settings = _settings(stack, "fold")
    files = _archives(tmp_path / "archives", stream)
    parked = tmp_path / "parked.jsonl"
    report = tmp_path / "report.json"
    expected = expect(stream, datetime.now(UTC), SKEW)

    done = _backfill(settings, *files, "--dead-letters", parked, "--report", report)

    assert done.returncode == 1, done.stderr  # some records were parked
    summary = json.loads(report.read_text())
    assert summary["records"] == len(stream)
    assert summary["parked"] == expected.invalid
    assert summary["applied"] == expected.history_rows
    assert f"{len(stream):,} records" in done.stdout
    dsn = settings.postgres.dsn.get_secret_value()
    assert store_matches(dsn, expected.snapshots) == len(expected.snapshots)
    assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == expected.history_rows
    letters = _dead_letters(parked)
    assert Counter(letter["reason"] for letter in letters) == expected.reasons
    by_id = {msg.event.event_id: msg for msg in stream}
    for letter in letters:  # each with its original record, whole
        assert letter["archive"].startswith("archive:")
        value = base64.b64decode(letter["original_value"])
        assert by_id[letter["event_id"]].event.event_id.encode() in value
    # The same archives again: nothing to do, nothing changes.
    again = _backfill(settings, *files, "--dead-letters", parked)
    assert again.returncode == 0, again.stderr
    assert "loaded already" in again.stdout
    assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == expected.history_rows
    assert len(_dead_letters(parked)) == len(letters)
    # Staging is gone once a run is done.
    assert (
        _sql(settings, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'backfill_stage%%'")[0][
            0
        ]
        == 0
    )


def test_json_lines_archives_and_their_bad_lines(
    stack: EmbeddedStack, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    """A JSON-lines export is judged line by line as `publish` judges it; a line that is no
    event is parked with its reason and its bytes, and the rest goes in."""
    settings = _settings(stack, "jsonl")
    civil = [msg for msg in stream if msg.event.source_registry is m.SourceRegistry.CIVIL_STATUS]
    path = tmp_path / "civil.jsonl"
    bad = [b"not json\n", b'{"a": 1, "a": 2}\n', b"[" * 100 + b"\n", b"\x00\n"]
    good = [json.dumps(event_to_json(msg.event)).encode() + b"\n" for msg in civil]
    path.write_bytes(b"".join(good[:5] + bad + good[5:]))
    sign_archive(path, dev_signer(m.SourceRegistry.CIVIL_STATUS))
    parked = tmp_path / "parked.jsonl"

    done = _backfill(settings, path, "--dead-letters", parked)

    assert done.returncode == 1, done.stderr
    letters = _dead_letters(parked)
    lines = {letter["position"]: letter for letter in letters}
    assert [lines[n]["reason"] for n in (6, 7, 8, 9)] == [
        "NOT_JSON",
        "DUPLICATE_KEY",
        "TOO_DEEP",
        "NUL_BYTE",
    ]
    assert base64.b64decode(lines[6]["original_value"]) == b"not json\n"
    expected = expect(civil, datetime.now(UTC), SKEW)
    assert len(letters) == expected.invalid + len(bad)
    assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == expected.history_rows


def test_an_archive_whose_signer_may_not_publish_its_records_is_parked_per_record(
    stack: EmbeddedStack, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    """Authority comes from the archive's signer, not from what a record declares."""
    settings = _settings(stack, "authority")
    residence = [msg for msg in stream if msg.event.source_registry is m.SourceRegistry.RESIDENCE]
    path = tmp_path / "residence.avro"
    write_avro_container(residence, path)
    sign_archive(path, dev_signer(m.SourceRegistry.ID_CARD))  # signed by another registry
    parked = tmp_path / "parked.jsonl"

    done = _backfill(settings, path, "--dead-letters", parked)

    assert done.returncode == 1
    reasons = Counter(letter["reason"] for letter in _dead_letters(parked))
    assert reasons["SOURCE_NOT_SIGNER"] > 0.9 * len(residence)
    assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == 0


def test_archives_that_cannot_be_trusted_or_read_are_refused_whole(
    stack: EmbeddedStack, stream: list[SimulatedMessage], tmp_path: Path
) -> None:
    settings = _settings(stack, "refused")
    good = _archives(tmp_path / "good", stream)[0]
    unsigned = tmp_path / "unsigned.avro"
    unsigned.write_bytes(good.read_bytes())
    tampered = tmp_path / "tampered.avro"
    tampered.write_bytes(good.read_bytes()[:-1] + b"\x00")
    signature_path(tampered).write_bytes(signature_path(good).read_bytes())
    broken = tmp_path / "broken.avro"
    broken.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2] + b"\x01" * 64)
    sign_archive(broken, dev_signer(m.SourceRegistry.CIVIL_STATUS))
    not_a_signature = tmp_path / "odd.avro"
    not_a_signature.write_bytes(good.read_bytes())
    signature_path(not_a_signature).write_text("{]", encoding="utf-8")

    cases = {
        unsigned: "popsync archive sign",
        tampered: "not the one signed",
        broken: "cannot be read",
        not_a_signature: "not an archive signature",
    }
    for path, says in cases.items():
        started = time.monotonic()
        done = _backfill(settings, good, path)
        assert done.returncode == 2, (path, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and path.name in lines[0], lines
        assert "Traceback" not in done.stderr
        assert time.monotonic() - started < 30
    assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == 0
    missing = _backfill(settings, tmp_path / "nowhere.avro")
    assert missing.returncode == 2 and "nowhere.avro" in missing.stderr


def test_killed_at_any_point_a_rerun_finishes_with_the_same_state(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """kill -9 during the apply pass; the same command resumes where it committed: the
    store equals the reference fold, no history row twice, each dead letter once."""
    messages = _archivable(simulate(1500, seed=2028, now=datetime.now(UTC)))
    settings = _settings(stack, "kill")
    files = _archives(tmp_path / "archives", messages)
    parked = tmp_path / "parked.jsonl"
    expected = expect(messages, datetime.now(UTC), SKEW)
    env = {**os.environ, **settings_env(settings)}
    argv = [sys.executable, "-m", "popsync", "backfill", "--no-progress", "--chunk", "100"]
    for kill_after in (50, 4000):  # once while staging or early, once deep in the apply
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            [*argv, *map(str, files), "--dead-letters", str(parked)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def applied(target: int = kill_after, process: subprocess.Popen[bytes] = process) -> bool:
            done = "SELECT coalesce(sum((counts->>'records')::int), 0) FROM backfill_parts"
            return bool(_sql(settings, done)[0][0] >= target) or process.poll() is not None

        assert eventually(applied, timeout=120)
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = "SELECT coalesce(sum((counts->>'records')::int), 0) FROM backfill_parts"
    assert 0 < _sql(settings, done)[0][0] < len(messages)  # killed half-way indeed
    done = _backfill(settings, *files, "--dead-letters", parked)

    assert done.returncode == 1, done.stderr
    dsn = settings.postgres.dsn.get_secret_value()
    assert store_matches(dsn, expected.snapshots) == len(expected.snapshots)
    history = _sql(
        settings, "SELECT count(*), count(DISTINCT (pin, event_id)) FROM citizen_history"
    )
    assert history[0] == (expected.history_rows, expected.history_rows)
    letters = _dead_letters(parked)
    assert Counter(letter["reason"] for letter in letters) == expected.reasons
    assert len({(letter["archive"], letter["position"]) for letter in letters}) == len(letters)


def _apply_order(messages: Sequence[SimulatedMessage]) -> list[SimulatedMessage]:
    """The order a backfill applies one archive in: by subject, then event time (a stable
    sort keeps the file order of equal times)."""
    return sorted(
        messages,
        key=lambda msg: (
            msg.event.subject_pin or "",
            msg.event.occurred_at,
            msg.event.recorded_at,
        ),
    )


@pytest.fixture
def workers(stack: EmbeddedStack) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def _stream(
    stack: EmbeddedStack,
    settings: Settings,
    messages: Sequence[SimulatedMessage],
    workers: list[WorkerProcess],
    history_rows: int,
) -> None:
    """Publish `messages` on the stream of `settings` and let its workers apply them."""
    _stream_only(stack, settings, messages, workers)

    def landed() -> bool:
        return bool(_sql(settings, "SELECT count(*) FROM citizen_history")[0][0] >= history_rows)

    assert eventually(landed, timeout=240)
    time.sleep(2)  # anything beyond the expected rows would land now


_CITIZEN = "SELECT * FROM citizens ORDER BY pin"
_HISTORY = (
    "SELECT pin, version, event_id, event_type, source_registry, changed_fields, changes, "
    "occurred_at, publisher_id, key_id FROM citizen_history ORDER BY pin, version"
)
_CONFLICTS = (
    "SELECT pin, event_id, conflict_code, message, resolved_at IS NULL FROM citizen_conflicts "
    "ORDER BY pin, event_id"
)


def _citizens(settings: Settings) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        cur = conn.execute(_CITIZEN.encode())
        names = [d.name for d in cur.description or ()]
        drop = {names.index(n) for n in ("updated_at",) if n in names}
        return [tuple(v for i, v in enumerate(row) if i not in drop) for row in cur.fetchall()]


def test_backfill_then_stream_equals_the_stream_of_both(
    stack: EmbeddedStack, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """backfill(A) + stream(B) == stream(A ∪ B) for an archive A overlapping the live
    topic's B: citizen by citizen, history row by history row, conflict by conflict."""
    messages = _archivable(simulate(250, seed=2029, now=datetime.now(UTC)))
    a, b = messages[: len(messages) * 7 // 10], messages[len(messages) // 2 :]
    both = [*_apply_order(a), *b]
    expected = expect(both, datetime.now(UTC), SKEW)

    handed = _settings(stack, "handoff")
    done = _backfill(handed, *_archives(tmp_path / "a", a), "--dead-letters", tmp_path / "p")
    assert done.returncode in (0, 1), done.stderr
    _stream(stack, handed, b, workers, expected.history_rows)

    streamed = _settings(stack, "reference")
    _stream(stack, streamed, both, workers, expected.history_rows)

    assert _citizens(handed) == _citizens(streamed)
    assert _sql(handed, _HISTORY) == _sql(streamed, _HISTORY)
    assert _sql(handed, _CONFLICTS) == _sql(streamed, _CONFLICTS)
    dsn = handed.postgres.dsn.get_secret_value()
    assert store_matches(dsn, expected.snapshots) == len(expected.snapshots)
    assert len(_sql(handed, _HISTORY)) == expected.history_rows


def _birth(pin: str | None, name: str, born: date, registered: date) -> m.RegistryEvent:
    """A birth registered on `registered` (`pin` None: registered without a PIN)."""
    payload = m.BirthRegistered(
        full_name=name,
        birth_date=born,
        sex=m.Sex.F,
        birthplace_province="79",
        registration_number=f"KS-{pin or 'new'}-{time.time_ns()}",
    )
    event = registry_event(
        pin or "", payload, m.EventType.BIRTH_REGISTERED, m.SourceRegistry.CIVIL_STATUS, registered
    )
    return event if pin else event.model_copy(update={"subject_pin": None})


def _signed(path: Path, events: Sequence[m.RegistryEvent], kind: m.SourceRegistry) -> Path:
    write_avro_container((SimulatedMessage(None, e, None) for e in events), path)
    sign_archive(path, dev_signer(kind))
    return path


def test_records_without_a_pin_are_resolved_after_the_citizens_they_name(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """Births registered without a PIN get one (and the registry its notice); a record naming
    a citizen by an old identifier lands on that citizen, whichever part holds it: records
    without a PIN go last, once the events declaring their aliases have been applied."""
    from popsync.contract.codec import Codec
    from popsync.domain.pin import make_pin
    from tests.polling import read_until

    settings = _settings(stack, "identity")
    pins = [make_pin("079", "F", 1990, 900 + i).value for i in range(8)]
    cmnds = [f"0{90000000 + i}" for i in range(8)]
    born = [_birth(pin, "Trần Thị Bình", date(1990, 4, 5), date(1990, 4, 6)) for pin in pins]
    newborns = [_birth(None, "Đặng Thị Mai", date(2024, 3, 4), date(2024, 3, 4)) for _ in range(5)]
    cards = [
        registry_event(
            pin,
            m.IdCardIssued(
                card=m.IdCard(
                    card_number=pin, issue_date=date(2021, 6, 1), issuing_authority="BCA"
                ),
                previous_id_number=cmnd,
            ),
            m.EventType.ID_CARD_ISSUED,
            m.SourceRegistry.ID_CARD,
            date(2021, 6, 1),
        )
        for pin, cmnd in zip(pins, cmnds, strict=True)
    ]
    moves = [  # each names its citizen by the old CMND only
        move(pin, date(2022, 2, 2), commune="26737").model_copy(
            update={"subject_pin": None, "subject_legacy_id": cmnd}
        )
        for pin, cmnd in zip(pins, cmnds, strict=True)
    ]
    files = [
        _signed(tmp_path / "civil.avro", [*born, *newborns], m.SourceRegistry.CIVIL_STATUS),
        _signed(tmp_path / "cards.avro", cards, m.SourceRegistry.ID_CARD),
        _signed(tmp_path / "moves.avro", moves, m.SourceRegistry.RESIDENCE),
    ]
    report = tmp_path / "report.json"

    done = _backfill(settings, *files, "--jobs", "2", "--report", report)

    assert done.returncode == 0, json.loads(report.read_text())["parked_by_reason"]
    assert json.loads(report.read_text())["applied"] == len(born + newborns + cards + moves)
    rows = _sql(
        settings,
        "SELECT pin, version, snapshot->'permanent_residence'->>'commune_code' FROM citizens "
        "WHERE pin = ANY(%s) ORDER BY pin",
        pins,
    )
    assert rows == [(pin, 3, "26737") for pin in sorted(pins)]
    new = _sql(settings, "SELECT count(*) FROM citizens WHERE NOT (pin = ANY(%s))", pins)
    assert new[0][0] == len(newborns)
    notices = read_until(
        settings, settings.topics.identity_assigned, lambda v: len(v) >= len(newborns)
    )
    decoded = [Codec(m.IdentityAssigned).decode(v) for v in notices]
    assert {n.event_id for n in decoded} == {e.event_id for e in newborns}


def test_simulated_archives_load_as_they_are_written(stack: EmbeddedStack, tmp_path: Path) -> None:
    """The path to try it by hand: `popsync simulate --format avro-container --output-dir`
    writes each registry's archive signed with its development key; `popsync backfill`
    loads them."""
    settings = _settings(stack, "simulated")
    env = {**os.environ, **settings_env(settings)}
    archives = tmp_path / "archives"
    written = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "popsync", "simulate", "--citizens", "40", "--seed", "7"]
        + ["--format", "avro-container", "--output-dir", str(archives)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    files = sorted(archives.glob("*.avro"))
    assert files and all(signature_path(f).exists() for f in files)

    done = _backfill(settings, *files, "--dead-letters", tmp_path / "parked.jsonl")

    assert done.returncode in (0, 1), done.stderr
    assert _sql(settings, "SELECT count(*) FROM citizens")[0][0] >= 40


_FENCE = "7061, 1"  # popsync.adapters.postgres.sync_state: the merge fence's advisory lock


def test_the_stream_and_a_backfill_never_merge_at_once(
    stack: EmbeddedStack, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The synchronizer holds the merge fence shared for a batch, a backfill exclusively
    while it applies: a backfill waits for a batch in flight, and the stream's events wait
    on the topic while a backfill applies, then land (nothing merged twice, nothing lost)."""
    messages = _archivable(simulate(30, seed=2030, now=datetime.now(UTC)))
    settings = _settings(stack, "fence")
    files = _archives(tmp_path / "archives", messages)
    dsn = settings.postgres.dsn.get_secret_value()
    env = {**os.environ, **settings_env(settings)}
    argv = [sys.executable, "-m", "popsync", "backfill", "--no-progress", *map(str, files)]
    argv += ["--dead-letters", str(tmp_path / "parked.jsonl")]

    # A synchronizer batch in flight holds the fence shared: the backfill waits for it.
    with psycopg.connect(dsn, autocommit=True) as batch:
        batch.execute(f"SELECT pg_advisory_lock_shared({_FENCE})".encode())
        backfill = subprocess.Popen(  # noqa: S603 - our own CLI
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(4)
        assert backfill.poll() is None
        assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == 0
    _, err = backfill.communicate(timeout=120)  # the batch ended: it goes on
    assert backfill.returncode in (0, 1), err
    assert "waiting for the stream's merges in flight" in err
    loaded = _sql(settings, "SELECT count(*) FROM citizen_history")[0][0]
    assert loaded > 0

    # While a backfill applies (it holds the fence), the stream's events wait, then land.
    later = new_births(3)
    with psycopg.connect(dsn, autocommit=True) as applying:
        applying.execute(f"SELECT pg_advisory_lock({_FENCE})".encode())
        _stream_only(stack, settings, later, workers)
        synchronizer = next(w for w in workers if w.name == "synchronizer")

        def fenced() -> bool:
            return "BackfillRunning" in synchronizer.log_path.read_text(errors="replace")

        assert eventually(fenced, timeout=90), "the synchronizer never met the fence"
        assert _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == loaded
    assert eventually(
        lambda: _sql(settings, "SELECT count(*) FROM citizen_history")[0][0] == loaded + 3,
        timeout=120,
    )


def new_births(count: int) -> list[SimulatedMessage]:
    from popsync.domain.pin import make_pin

    pins = [make_pin("079", "F", 1991, 950 + i).value for i in range(count)]
    births = (_birth(pin, "Lê Thị Hoa", date(1991, 5, 6), date(1991, 5, 7)) for pin in pins)
    return [SimulatedMessage(b.subject_pin.encode(), b, None) for b in births if b.subject_pin]


def _stream_only(
    stack: EmbeddedStack,
    settings: Settings,
    messages: Sequence[SimulatedMessage],
    workers: list[WorkerProcess],
) -> None:
    """Start the stream's workers on `settings` and publish `messages`; wait for nothing."""
    for name in WORKER_NAMES:
        log = stack.workdir / "logs" / f"{settings.topics.registry_events}-{name}.log"
        workers.append(WorkerProcess(name, settings, log))
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    publisher.publish((msg.key, msg.event) for msg in messages)
