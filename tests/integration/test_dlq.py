"""Dead letters on the real broker and PostgreSQL: the limit, `dlq list` and `dlq replay`.

Each test runs workers of its own (topics, groups and database named after the
test), so it does not depend on the shared `pipeline` fixture.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.adapters.kafka.reader import read_to_end
from popsync.contract import models as m
from popsync.dev.stack import EmbeddedStack, WorkerProcess, settings_env
from popsync.domain.legal_time import legal_date
from popsync.domain.merge import Applied, CitizenState, apply_event, fold, legal_order
from popsync.domain.pin import make_pin
from popsync.domain.reasons import is_retryable
from popsync.domain.rules import check_event
from popsync.ops import dlq
from popsync.ops.publish import Publisher
from popsync.runtime.deadletter import DEAD_LETTER_CODEC
from popsync.runtime.messages import OutboundMessage
from popsync.settings import (
    DeadLetterLimitSettings,
    Settings,
    WorkerName,
)
from popsync.trust.signing import Signer
from tests.builders import birth, divorce, marriage, move
from tests.polling import eventually
from tests.signing import DEV_SIGNERS, register_publisher, signature_headers

pytestmark = pytest.mark.integration

_serials = itertools.count(800000)


def new_pin() -> str:
    return make_pin("079", "F", 1990, next(_serials)).value


def isolated(stack: EmbeddedStack, name: str, **overrides: Any) -> Settings:
    """A pipeline of its own (database, topics, groups named `name`), provisioned."""
    settings = stack.isolated_settings(name, **overrides)
    stack.prepare(settings)
    return settings


@contextmanager
def workers(
    stack: EmbeddedStack, settings: Settings, names: Sequence[WorkerName], tag: str
) -> Iterator[list[WorkerProcess]]:
    """Workers that are stopped, and forgotten by the stack, when the block ends."""
    started = [stack.start_worker(name, settings, tag) for name in names]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()
            stack.workers.remove(worker)


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def citizen(settings: Settings, pin: str, version: int) -> tuple[Any, ...] | None:
    found = rows(
        settings,
        "SELECT version, marital_status, snapshot FROM citizens WHERE pin = %s AND version >= %s",
        pin,
        version,
    )
    return found[0] if found else None


def publish(settings: Settings, *events: m.RegistryEvent) -> None:
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    publisher.publish(((e.subject_pin or "").encode(), e) for e in events)


def parked(settings: Settings) -> list[m.DeadLetter]:
    return [p.letter for p in dlq.scan(settings, dlq.Selection(), timeout=30).letters]


def dead_letter_records(settings: Settings) -> list[bytes | None]:
    """Every record on the dead-letter topic, repeats included (`scan` counts those once)."""
    return [v for _, _, v in read_to_end(settings.kafka, settings.topics.dead_letters, 30)]


def popsync_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popsync.cli", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def at(event: m.RegistryEvent, moment: datetime) -> m.RegistryEvent:
    return event.model_copy(update={"occurred_at": moment, "recorded_at": moment})


def in_order_snapshot(pin: str, events: Sequence[m.RegistryEvent]) -> dict[str, Any]:
    """What processing the events one by one in legal order gives (no gap, no dead letter)."""
    now, state = datetime.now(UTC), CitizenState(pin)
    for event in sorted(events, key=legal_order):
        outcome = apply_event(state, check_event(event, pin.encode(), now, timedelta(0)))
        assert isinstance(outcome, Applied) and not outcome.new_conflicts
        state = outcome.state
    assert state.snapshot is not None
    assert state.snapshot == fold(pin, state.events.values())[0]
    return state.snapshot.model_dump(mode="json")


def test_a_parked_event_replayed_after_the_fix_gives_the_in_order_state(
    stack: EmbeddedStack,
) -> None:
    settings = isolated(
        stack,
        "dlqreplay",
        topics={"partitions": 1},  # one partition: the sentinel below is read after the replays
        processing={"future_skew_seconds": 0},
    )
    pin = new_pin()
    with workers(stack, settings, ("validator", "synchronizer"), "-dlqreplay"):
        born = birth(pin)
        publish(settings, born)
        assert eventually(lambda: citizen(settings, pin, 1)), "pipeline did not start"

        # A registry clock ahead of ours: the marriage is "in the future" and parked,
        # a retryable reason; the citizen's later events flow on over the gap.
        when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
        married = at(marriage(pin, legal_date(when)), when)
        moved = move(pin, date(2020, 3, 1))
        publish(settings, married, moved)
        letters = eventually(lambda: parked(settings))
        assert [(x.reason_code, x.event_id) for x in letters] == [
            ("OCCURRED_IN_FUTURE", married.event_id)
        ]
        assert eventually(lambda: citizen(settings, pin, 2))

        time.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()) + 1.5)
        divorced = at(divorce(pin, legal_date(when)), when + timedelta(seconds=1))
        publish(settings, divorced)  # applied over the gap: a divorce without its marriage
        row = eventually(lambda: citizen(settings, pin, 3))
        assert row is not None and row[1] == "SINGLE"
        open_conflicts = (
            "SELECT conflict_code FROM citizen_conflicts WHERE pin = %s AND resolved_at IS NULL"
        )
        assert eventually(lambda: rows(settings, open_conflicts, pin)) == [("NOT_MARRIED",)]

        # The fix is time passing; the operator replays what was parked for that reason.
        replayed = popsync_cli(
            settings, "dlq", "replay", "--reason", "OCCURRED_IN_FUTURE", "--source", "civil-status"
        )
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 1 of 1 selected dead letters" in replayed.stdout
        row = eventually(lambda: citizen(settings, pin, 4))
        assert row is not None and row[1] == "DIVORCED"
        assert row[2] == in_order_snapshot(pin, [born, married, moved, divorced])
        assert eventually(lambda: not rows(settings, open_conflicts, pin))

        # Replaying the same letter again changes nothing: same event id, same content.
        again = popsync_cli(settings, "dlq", "replay", "--retryable")
        assert again.returncode == 0, again.stderr
        assert "replayed 1 of 1 selected dead letters" in again.stdout
        sentinel = new_pin()
        publish(settings, birth(sentinel))  # same partition, after the second replay
        assert eventually(lambda: citizen(settings, sentinel, 1))

    history = rows(
        settings, "SELECT version, event_id FROM citizen_history WHERE pin = %s ORDER BY 1", pin
    )
    # Versions follow arrival order; the replayed marriage is the last one, once.
    assert history == [
        (1, born.event_id),
        (2, moved.event_id),
        (3, divorced.event_id),
        (4, married.event_id),
    ]
    final = citizen(settings, pin, 4)
    assert final is not None and final[0] == 4
    assert len(parked(settings)) == 1  # the replays passed validation: nothing parked again
    assert pin not in replayed.stdout + replayed.stderr + again.stdout + again.stderr


def bad_messages() -> list[tuple[bytes | None, m.RegistryEvent | bytes | None]]:
    """15 messages the validator must park: 4 reasons, 3 sources (one unknown)."""
    out: list[tuple[bytes | None, m.RegistryEvent | bytes | None]] = []
    for i in range(15):
        pin = new_pin()
        if i % 5 in (0, 1):
            out.append((b"not-a-pin", b"\x00garbage"))  # BAD_MAGIC, source unknown
        elif i % 5 == 2:
            wrong = birth(pin).model_copy(update={"source_province": "00"})
            out.append((pin.encode(), wrong))  # PROVINCE_OUT_OF_SCOPE: no publisher's province
        elif i % 5 == 3:
            out.append((pin.encode(), move(pin, date(2020, 1, 1), commune="123")))
        else:
            out.append((pin.encode(), None))  # EMPTY_VALUE
    return out


def send(settings: Settings, messages: Sequence[tuple[bytes | None, Any]]) -> None:
    publisher = Publisher(
        BatchProducer(settings.kafka), settings.topics.registry_events, DEV_SIGNERS
    )
    for key, value in messages:
        if isinstance(value, m.RegistryEvent):
            publisher.send(key, value)
        else:
            publisher.send_raw(key, value, signature_headers(key, value))
    publisher.flush()


EXPECTED_REASONS = {
    "BAD_MAGIC": 6,
    "PROVINCE_OUT_OF_SCOPE": 3,
    "COMMUNE_CODE_MALFORMED": 3,
    "EMPTY_VALUE": 3,
}


def residence_registries(settings: Settings, provinces: Sequence[str]) -> dict[str, Signer]:
    """A residence registry per province, each a publisher with its own key."""
    return {
        province: register_publisher(
            settings, f"residence-{province}", m.SourceRegistry.RESIDENCE, [province]
        )
        for province in provinces
    }


def send_failing_alike(settings: Settings, sources: int, each: int) -> int:
    """What a bad deploy looks like: `sources` registries' events all refused for the same
    reason (here a commune code the rules suddenly refuse), interleaved; how many."""
    signers = residence_registries(settings, ["01", "79", "48", "31", "92", "04"][:sources])
    producer = BatchProducer(settings.kafka)
    topic = settings.topics.registry_events
    registries = {p: Publisher(producer, topic, signer) for p, signer in signers.items()}
    for _ in range(each):
        for province, registry in registries.items():
            pin = new_pin()
            event = move(pin, date(2020, 1, 1), commune="123")
            registry.send(pin.encode(), event.model_copy(update={"source_province": province}))
    producer.flush_sync()
    producer.close()
    return sources * each


def test_many_sources_failing_alike_stop_the_worker_before_it_sends_and_nothing_is_lost(
    stack: EmbeddedStack,
) -> None:
    settings = isolated(
        stack,
        "dlqlimit",
        topics={"partitions": 1},
        processing={"batch_window_seconds": 2.0},  # the 17 messages make one batch
        dead_letter_limit={"window": 40, "max_consecutive": 4, "bad_deploy_sources": 3},
    )
    good = new_pin()
    bad = send_failing_alike(settings, sources=4, each=4)
    send(settings, [(good.encode(), birth(good))])

    with workers(stack, settings, ("validator",), "-dlqlimit") as (validator,):
        assert validator.process.wait(timeout=60) == 70
    log = validator.log_path.read_text(encoding="utf-8", errors="replace")
    assert (
        "dead-letter limit reached in validator: 3 sources crossed it for the same reason "
        "(COMMUNE_CODE_MALFORMED)" in log
    )
    assert "signature of a bad deployment" in log and good not in log
    assert dead_letter_records(settings) == []  # the stopped batch sent nothing
    assert not list(read_to_end(settings.kafka, settings.topics.validated_events, 30))
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        assert conn.execute("SELECT count(*) FROM source_quarantine").fetchone() == (0,)

    limit = DeadLetterLimitSettings(window=1000, max_consecutive=1000, bad_deploy_sources=100)
    higher = settings.model_copy(update={"dead_letter_limit": limit})
    with workers(stack, higher, ("validator",), "-dlqlimit-raised"):
        validated = eventually(
            lambda: list(read_to_end(settings.kafka, settings.topics.validated_events, 30))
        )
    assert len(validated) == 1  # the good message, after the 16 bad ones (one partition)
    letters = [DEAD_LETTER_CODEC.decode(value) for value in dead_letter_records(settings)]
    assert Counter(x.original_offset for x in letters) == Counter(range(bad))  # each once
    assert Counter(x.reason_code for x in letters) == {"COMMUNE_CODE_MALFORMED": bad}
    assert {x.stage for x in letters} == {"validator"}


def test_dlq_list_counts_what_is_parked_and_replay_skips_empty_values(
    stack: EmbeddedStack,
) -> None:
    settings = isolated(stack, "dlqlist", topics={"partitions": 3})
    messages = bad_messages()
    send(settings, messages)
    with workers(stack, settings, ("validator",), "-dlqlist"):
        assert eventually(lambda: len(parked(settings)) == 15)
    # At-least-once delivery may park a message twice: list and replay count it once.
    repeat = OutboundMessage(settings.topics.dead_letters, None, dead_letter_records(settings)[0])
    producer = BatchProducer(settings.kafka)
    producer.produce(repeat)
    producer.flush_sync()

    listed = popsync_cli(settings, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert out.startswith(
        f"{settings.topics.dead_letters}: 15 dead letters\n"
        "(1 repeats of a parked message were counted once)\n"
    )
    assert (
        "by reason:\n  6  BAD_MAGIC\n  3  COMMUNE_CODE_MALFORMED\n  3  EMPTY_VALUE\n"
        "  3  PROVINCE_OUT_OF_SCOPE\nby stage:\n  15  validator\n"
        # garbage and empty values carry no source registry
        "by source registry:\n  9  (unknown)\n  3  CIVIL_STATUS\n  3  RESIDENCE\n"
    ) in out
    assert f"by original topic:\n  15  {settings.topics.registry_events}\n" in out
    assert "failed between " in out

    retryable = popsync_cli(settings, "dlq", "list", "--retryable")
    assert retryable.returncode == 0, retryable.stderr
    expected = sum(n for code, n in EXPECTED_REASONS.items() if is_retryable(code))
    assert f"15 dead letters, {expected} selected" in retryable.stdout

    residence = popsync_cli(settings, "dlq", "list", "--source", "residence")
    assert residence.returncode == 0, residence.stderr
    assert residence.stdout.startswith(f"{settings.topics.dead_letters}: 15 dead letters, 3 sel")
    assert "by reason:\n  3  COMMUNE_CODE_MALFORMED\nby stage:" in residence.stdout

    dry = popsync_cli(settings, "dlq", "replay", "--reason", "BAD_MAGIC", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would replay 6" in dry.stdout
    empty = popsync_cli(settings, "dlq", "replay", "--reason", "EMPTY_VALUE")
    assert empty.returncode == 0, empty.stderr
    assert "skipped 3 with no original value" in empty.stdout
    assert "replayed 0 of 3 selected dead letters" in empty.stdout
    registry = list(read_to_end(settings.kafka, settings.topics.registry_events, 30))
    assert len(registry) == len(messages)  # neither command sent anything

    shown = listed.stdout + listed.stderr + residence.stdout + dry.stdout + empty.stdout
    assert all(key.decode() not in shown for key, _ in messages if key != b"not-a-pin")
