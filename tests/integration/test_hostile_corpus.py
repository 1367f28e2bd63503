"""The hostile corpus: every kind of bad input, through the real CLI, broker and workers.

Two doors, as a hostile registry would use them:
- a JSON-lines file given to `popsync publish` (`JSON_LINE_KINDS`: binary, invalid UTF-8,
  BOM, NUL, deep nesting, huge numbers, NaN/Infinity, duplicate keys, oversize, future
  dates, 1900-02-29, mixed scripts and zero-width characters in names, SQL and shell
  metacharacters, ...): each line is refused by `publish` with its code, or published and
  then either applied or dead-lettered with its reason;
- raw bytes on the registry topic (the catalogue `tests.builders.KINDS`: wrong schema
  fingerprint, truncated Avro, key ≠ PIN, ...; and an event of 5 MiB): each must arrive on
  the dead-letter topic with its reason code and its original key and value byte for byte
  (the 5 MiB one in the small form, with its SHA-256).
Good events sent in between must all reach PostgreSQL, and no worker may stop.

The test runs its own three workers, topics and database on the session's broker and
PostgreSQL (`stack`), not the shared `pipeline`: its 80-odd dead letters on the shared
dead-letter topic would be what `test_pipeline`'s reader, which takes the first dead
letters it finds from offset 0, gets instead of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from popsync.adapters.kafka.producer import BatchProducer
from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.contract.json_form import event_to_json
from popsync.dev.publishers import dev_signer
from popsync.dev.stack import EmbeddedStack, WorkerProcess, settings_env
from popsync.domain.reasons import REASONS
from popsync.ops.publish import MAX_LINE_BYTES, Publisher
from popsync.settings import WORKER_NAMES, Settings
from popsync.topology import MAX_EVENT_BYTES
from tests.builders import Citizens, bad_messages
from tests.polling import eventually, read_until
from tests.signing import DEV_SIGNERS

pytestmark = pytest.mark.integration

NAME = "badinput"
_serials = itertools.count(700_000)  # PINs of their own: other tests use other serials
# "Absurdly long" values, smaller than in the unit test (the largest message has a test
# of its own below).
HUGE = 200_000
GOOD_EVERY = 20  # a good event after every so many bad ones

Sent = tuple[bytes | None, bytes | None]


@pytest.fixture(scope="module")
def own_pipeline(stack: EmbeddedStack) -> Iterator[tuple[Settings, list[WorkerProcess]]]:
    """Topics, groups and database named `badinput`, and the three workers."""
    settings = stack.isolated_settings(NAME)
    stack.prepare(settings)
    started = [stack.start_worker(name, settings, tag=f"-{NAME}") for name in WORKER_NAMES]
    try:
        yield settings, started
    finally:
        for worker in started:
            worker.stop()
            stack.workers.remove(worker)  # the session's check is about its own workers


def read_dead_letters(
    settings: Settings, wanted: set[Sent], timeout: float
) -> dict[Sent, m.DeadLetter]:
    """Dead letters whose original (key, value) is in `wanted`, read from every partition."""
    codec = Codec(m.DeadLetter)

    def found(values: list[bytes | None]) -> dict[Sent, m.DeadLetter]:
        letters = (codec.decode(value) for value in values)
        return {
            (letter.original_key, letter.original_value): letter
            for letter in letters
            if (letter.original_key, letter.original_value) in wanted
        }

    topic = settings.topics.dead_letters
    return found(read_until(settings, topic, lambda v: len(found(v)) >= len(wanted), timeout))


def test_every_kind_of_bad_input_is_dead_lettered_and_good_events_flow_on(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    citizens = Citizens(_serials, datetime.now(UTC), huge=HUGE)
    bad = bad_messages(citizens)
    assert len({(b.key, b.value) for b in bad}) == len(bad)  # each one can be told apart
    producer = BatchProducer(settings.kafka)
    publisher = Publisher(producer, settings.topics.registry_events, DEV_SIGNERS)
    good_pins = []
    for i, message in enumerate(bad):
        publisher.send_raw(message.key, message.value, list(message.headers))
        if i % GOOD_EVERY == 0:
            good = citizens.birth()
            assert good.subject_pin is not None
            publisher.send(good.subject_pin.encode(), good)
            good_pins.append(good.subject_pin)
    publisher.flush()
    producer.close()

    letters = read_dead_letters(settings, {(b.key, b.value) for b in bad}, timeout=60)

    missing = [b.kind for b in bad if (b.key, b.value) not in letters]
    assert not missing, f"not dead-lettered: {missing}"
    for b in bad:
        letter = letters[(b.key, b.value)]
        assert (b.kind, letter.reason_code) == (b.kind, b.reason)
        assert letter.reason_code in REASONS
        assert letter.stage == "validator"
        assert letter.original_topic == settings.topics.registry_events
    dsn = settings.postgres.dsn.get_secret_value()

    def stored() -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute(
                b"SELECT pin, version FROM citizens WHERE pin = ANY(%s)", (good_pins,)
            ).fetchall()

    rows = eventually(lambda: len(stored()) == len(good_pins) and stored())
    assert sorted(rows) == sorted((pin, 1) for pin in good_pins)
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"


def test_the_largest_event_a_registry_may_send_is_parked_whole(
    own_pipeline: tuple[Settings, list[WorkerProcess]],
) -> None:
    settings, workers = own_pipeline
    key = b"079190000000"
    value = b"\xc3\x01" + bytes(range(256)) * ((MAX_EVENT_BYTES - 4096) // 256)
    producer = BatchProducer(settings.kafka)
    Publisher(producer, settings.topics.registry_events, DEV_SIGNERS).send_raw(key, value)
    producer.flush_sync()
    producer.close()
    letters = read_dead_letters(settings, {(key, value)}, timeout=60)
    assert letters[(key, value)].reason_code == "UNKNOWN_SCHEMA"
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"


# ---------------------------------------------------------------------------------------
# The JSON-lines door: `popsync publish`

LANDS = "lands"  # published, validated and applied: the citizen is in the store


@dataclass(frozen=True)
class LineKind:
    name: str
    # "refused" (by publish, with its code), "dead_letter" (published, parked for its
    # reason) or LANDS
    outcome: str
    code: str
    build: Callable[[Citizens], bytes]


def line(event: m.RegistryEvent, **fields: Any) -> bytes:
    """The event as a JSON line, with top-level `fields` replaced."""
    return json.dumps({**event_to_json(event), **fields}, ensure_ascii=False).encode()


def payload_line(event: m.RegistryEvent, **fields: Any) -> bytes:
    """The event as a JSON line, with payload `fields` replaced (raw JSON values)."""
    form = event_to_json(event)
    form["payload"] = {**form["payload"], **fields}
    return json.dumps(form, ensure_ascii=False).encode()


def raw_text(event: m.RegistryEvent, old: str, new: bytes) -> bytes:
    """The event's JSON line with the text `old` replaced by raw bytes `new`."""
    encoded = line(event)
    assert old.encode() in encoded
    return encoded.replace(old.encode(), new, 1)


NAME = Citizens.NAME
JSON_LINE_KINDS: tuple[LineKind, ...] = (
    # line 1: a byte-order mark is accepted there
    LineKind("bom_on_line_1", LANDS, "", lambda c: b"\xef\xbb\xbf" + line(c.birth())),
    LineKind(
        "binary_garbage",
        "refused",
        "NOT_UTF8",
        lambda c: bytes(b for b in range(1, 256) if b != ord("\n")),
    ),
    LineKind(
        "invalid_utf8_in_a_name",
        "refused",
        "NOT_UTF8",
        lambda c: raw_text(c.birth(), NAME, b"Nguy\xe1\xbb Van"),
    ),
    LineKind(
        "nul_byte", "refused", "NUL_BYTE", lambda c: raw_text(c.birth(), NAME, b"Nguyen\x00Van")
    ),
    LineKind("nested_200k_deep", "refused", "TOO_DEEP", lambda c: b"[" * 200_000 + b"]" * 200_000),
    LineKind(
        "source_sequence_2_to_the_70",
        "refused",
        "NUMBER_OUT_OF_RANGE",
        lambda c: raw_text(
            c.birth(), '"source_sequence": ', b'"source_sequence": 1180591620717411303424, "x": '
        ),
    ),
    LineKind(
        "nan",
        "refused",
        "NOT_FINITE",
        lambda c: raw_text(c.birth(), '"source_sequence": ', b'"source_sequence": NaN, "x": '),
    ),
    LineKind(
        "minus_infinity",
        "refused",
        "NOT_FINITE",
        lambda c: raw_text(
            c.birth(), '"source_sequence": ', b'"source_sequence": -Infinity, "x": '
        ),
    ),
    LineKind(
        "duplicate_json_keys",
        "refused",
        "DUPLICATE_KEY",
        lambda c: b'{"event_id": "x", ' + line(c.birth())[1:],
    ),
    LineKind(
        "event_over_1_mib",
        "refused",
        "EVENT_TOO_LARGE",
        lambda c: line(c.birth(), correlation_id="c" * MAX_EVENT_BYTES),
    ),
    LineKind("line_over_4_mib", "refused", "LINE_TOO_LONG", lambda c: b"x" * (MAX_LINE_BYTES + 1)),
    LineKind("not_json", "refused", "NOT_JSON", lambda c: b"registry says hello"),
    LineKind("json_array", "refused", "CONTRACT_VIOLATION", lambda c: b"[1, 2, 3]"),
    LineKind("empty_object", "refused", "EVENT_TYPE_UNKNOWN", lambda c: b"{}"),
    LineKind(
        "lone_surrogate_escape",
        "refused",
        "NOT_UTF8",
        lambda c: raw_text(c.birth(), NAME, b"Nguyen \\ud800 Van"),
    ),
    LineKind("another_registrys_event", "refused", "SOURCE_MISMATCH", lambda c: line(c.move())),
    LineKind(
        "birth_on_1900_02_29",
        "refused",
        "CONTRACT_VIOLATION",
        lambda c: payload_line(c.birth(), birth_date="1900-02-29"),
    ),
    LineKind(
        "occurred_tomorrow",
        "dead_letter",
        "OCCURRED_IN_FUTURE",
        lambda c: line(
            c.birth(),
            occurred_at=(c.now + timedelta(days=1)).isoformat(),
            recorded_at=(c.now + timedelta(days=1, hours=1)).isoformat(),
        ),
    ),
    LineKind(
        "zero_width_space_in_name",
        "dead_letter",
        "NAME_CONTROL_CHARS",
        lambda c: payload_line(c.birth(), full_name="Nguyễn\u200bVăn An"),
    ),
    LineKind(
        "escaped_nul_in_name",
        "dead_letter",
        "NAME_CONTROL_CHARS",
        lambda c: payload_line(c.birth(), full_name="Nguyễn\u0000Văn An"),
    ),
    LineKind(  # letters all: accepted today (a rule against mixed scripts is not written)
        "latin_and_cyrillic_in_a_name",
        LANDS,
        "",
        lambda c: payload_line(c.birth(), full_name="Nguyễn Vаn An"),  # а is Cyrillic
    ),
    LineKind(
        "sql_in_a_name",
        "dead_letter",
        "NAME_BAD_CHARACTERS",
        lambda c: payload_line(c.birth(), full_name="Robert'); DROP TABLE citizens;--"),
    ),
    LineKind(
        "sql_in_a_registration_number",
        LANDS,
        "",
        lambda c: payload_line(c.birth(), registration_number="KS-1'; DROP TABLE citizens;--"),
    ),
    LineKind(
        "shell_in_a_registration_number",
        LANDS,
        "",
        lambda c: payload_line(c.birth(), registration_number="$(rm -rf /); `reboot` | tee x"),
    ),
)


def publish_file(settings: Settings, path: Path) -> subprocess.CompletedProcess[str]:
    """`popsync publish` as a registry's operator runs it: the real CLI, its own process,
    signing with the registry's key."""
    key_file = path.with_suffix(".key")
    if not key_file.exists():
        dev_signer(m.SourceRegistry.CIVIL_STATUS).save(key_file)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("POPSYNC_")}
    command = ["publish", "--source", "civil-status", "--signing-key", str(key_file), str(path)]
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "popsync", *command],
        env={**env, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def parsed(raw: bytes) -> dict[str, Any]:
    """The JSON of a line this test built (to know which event it carries)."""
    form: dict[str, Any] = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    return form


def refused_lines(result: subprocess.CompletedProcess[str], path: Path) -> dict[int, str]:
    """`FILE:LINE: CODE: message` lines of publish's stderr, as {line: code}."""
    refused = {}
    for reported in result.stderr.splitlines():
        number, code, _ = reported.removeprefix(f"{path}:").split(": ", 2)
        refused[int(number)] = code
    return refused


def citizens_stored(settings: Settings, pins: list[str]) -> set[str]:
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        rows = conn.execute("SELECT pin FROM citizens WHERE pin = ANY(%s)", (pins,)).fetchall()
    return {row[0] for row in rows}


def test_the_hostile_corpus_ends_refused_parked_or_applied_and_the_good_all_land(
    own_pipeline: tuple[Settings, list[WorkerProcess]], tmp_path: Path
) -> None:
    settings, workers = own_pipeline
    citizens = Citizens(_serials, datetime.now(UTC), huge=HUGE)
    bad = bad_messages(citizens)
    big = (citizens.pin().encode(), b"\xc3\x01" + b"\x00" * (5 * 1024 * 1024))
    kinds = len(JSON_LINE_KINDS) + len(bad) + 1
    assert kinds >= 40

    # The JSON-lines door: a good line after every hostile one.
    lines: list[bytes] = []
    at_line: dict[int, LineKind] = {}
    good_pins: list[str] = []
    must_land: list[str] = []  # PINs of hostile lines that are valid events
    parked_ids: dict[str, str] = {}  # event id -> reason, of lines the validator must park
    for kind in JSON_LINE_KINDS:
        built = kind.build(citizens)
        at_line[len(lines) + 1] = kind
        lines.append(built)
        if kind.outcome == LANDS:
            must_land.append(parsed(built)["subject_pin"])
        elif kind.outcome == "dead_letter":
            parked_ids[parsed(built)["event_id"]] = kind.code
        good = citizens.birth()
        lines.append(line(good))
        good_pins.append(good.subject_pin or "")
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = publish_file(settings, path)
    assert result.returncode == 1, result.stderr[-2000:]
    refused = refused_lines(result, path)
    expected_refusals = {n: k.code for n, k in at_line.items() if k.outcome == "refused"}
    assert refused == expected_refusals  # each hostile line for its reason, no good line

    # The raw-bytes door: an event of 5 MiB, then the catalogue, good events between.
    producer = BatchProducer(settings.kafka, **{"message.max.bytes": 8 * 1024 * 1024})
    publisher = Publisher(producer, settings.topics.registry_events, DEV_SIGNERS)
    publisher.send_raw(*big)
    for message in bad:
        publisher.send_raw(message.key, message.value, list(message.headers))
        good = citizens.birth()
        publisher.send((good.subject_pin or "").encode(), good)
        good_pins.append(good.subject_pin or "")
    publisher.flush()
    producer.close()

    letters = read_dead_letters(settings, {(b.key, b.value) for b in bad}, timeout=120)
    for b in bad:
        assert letters[(b.key, b.value)].reason_code == b.reason, b.kind
    codec = Codec(m.DeadLetter)

    def every_letter(values: list[bytes | None]) -> list[m.DeadLetter]:
        return [codec.decode(value) for value in values]

    def complete(values: list[bytes | None]) -> bool:
        found = every_letter(values)
        ids = {x.event_id for x in found}
        return all(i in ids for i in parked_ids) and any(x.original_truncated for x in found)

    found = every_letter(read_until(settings, settings.topics.dead_letters, complete, 120))
    by_id = {x.event_id: x.reason_code for x in found if x.event_id in parked_ids}
    assert by_id == parked_ids
    truncated = [x for x in found if x.original_truncated]
    assert [(x.reason_code, x.original_size, x.original_sha256) for x in truncated] == [
        ("EVENT_TOO_LARGE", len(big[1]), hashlib.sha256(big[1]).hexdigest())
    ]

    everyone = good_pins + must_land
    landed = eventually(lambda: citizens_stored(settings, everyone) == set(everyone), timeout=120)
    assert landed, f"{len(citizens_stored(settings, everyone))} of {len(everyone)} landed"
    for worker in workers:
        assert worker.alive, f"{worker.name} died; see {worker.log_path}"
    print(
        f"\nhostile corpus: {kinds} kinds; {len(expected_refusals)} refused by publish with "
        f"their line and code, {len(parked_ids)} published then dead-lettered for their "
        f"reason, {len(bad) + 1} raw messages dead-lettered (the 5 MiB one in its small "
        f"form), {len(must_land)} hostile but valid applied; {len(good_pins)} good events "
        "between them all applied; no worker stopped"
    )
