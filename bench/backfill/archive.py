"""The registries' archives the backfill loads: N events as signed Avro container files.

The simulator keeps a whole population in memory (about 2.5 KB per event here), so it cannot
make 10,000,000 events at once. A base block (`BASE_EVENTS`) is simulated once, with the
demo's simulator (coherent lives, legacy province codes, 1% invalid, 2% re-sent, 5% out of
order), and kept as one container file in stream order (`base-SEED-B.avro`). The archive
of N events is that block written `ceil(N / B)` times, the last time cut to what is left,
every copy after the first made of other citizens:

- every PIN-bearing field (subject, father, mother, spouse, previous PIN, identity card
  number) keeps its first 6 digits (province, gender/century, birth year: what the rules
  check against the birth date and sex) and gets a serial of its own per copy (`PinRemap`):
  for each 6-digit prefix, copy k takes the k-th run of serials the base does not use, so
  no copy's PINs meet another's or the originals', by construction (and checked);
- every event id and correlation id becomes a version-8 UUID carrying the copy and the
  identifier's ordinal in the block (`IdRemap`): distinct per copy, and from the base's
  version-4 ids, by construction (checked: the base's ids are version-4 UUIDs);
- re-sent events stay re-sent (the same id maps to the same id), invalid ones invalid.

The copies are made on the decoded datums (dicts), never on pydantic models: reading,
remapping and writing a datum costs a few tens of µs, building a model alone about as much.
Each archive file holds one registry kind's events (its signer must be the registry of every
record) and is signed beside it (`FILE.sig`, `popsync.trust.archives.sign_archive`).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import fastavro
from fastavro.write import Writer

from popsync.contract import models as m
from popsync.contract.codec import from_avro_datum, to_avro_datum
from popsync.contract.schemas import contract_schema
from popsync.dev.publishers import dev_signer
from popsync.dev.simulate.generator import simulate
from popsync.domain.rules import RuleViolation, check_event
from popsync.trust.archives import sign_archive

BASE_EVENTS = 250_000  # one simulated block: about 10 s and 700 MB to simulate
EVENTS_PER_CITIZEN = 5.6  # what the simulator produces on average
SKEW = timedelta(seconds=300)  # the validator's default tolerance for "future"
_SERIALS = 1_000_000  # a PIN's last 6 digits
_PIN_LENGTH = 12
# Flags per base event (one byte each), as the validator's rules judge it on a given day.
VALID = 1  # the rules accept it (keyed by its subject PIN, as an archive has no key)
FIRST = 2  # valid, and the first of its (PIN, event id): a history row
NEW_CITIZEN = 4  # valid, and the first valid event of its PIN


def registry_events_schema() -> Any:
    return contract_schema("RegistryEvent").parsed


# --------------------------------------------------------------------------- the base block


@dataclass(frozen=True)
class Base:
    path: Path  # the block's events in stream order, all registries, unsigned
    seed: int
    events: int
    citizens: int
    generated_at: datetime  # the simulator's `now`


def load_or_simulate_base(
    events: int, seed: int, cache_dir: Path, say: Callable[[str], None] = print
) -> Base:
    path = cache_dir / f"base-{seed}-{events}.avro"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        header = json.loads(meta.read_text(encoding="utf-8"))
        return Base(
            path, seed, events, header["citizens"], datetime.fromisoformat(header["generated_at"])
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    started = time.monotonic()
    citizens = max(1, math.ceil(events / EVENTS_PER_CITIZEN))
    messages = simulate(citizens, seed=seed, now=now)
    while len(messages) < events:  # a seed that yields fewer events per citizen
        citizens = math.ceil(citizens * 1.05 * events / len(messages))
        messages = simulate(citizens, seed=seed, now=now)
    del messages[events:]
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        fastavro.writer(
            out,
            registry_events_schema(),
            (to_avro_datum(message.event) for message in messages),
            codec="deflate",
        )
    del messages
    tmp.replace(path)
    meta.write_text(
        json.dumps({"citizens": citizens, "events": events, "generated_at": now.isoformat()}),
        encoding="utf-8",
    )
    say(
        f"simulated a base block of {events:,} events ({citizens:,} citizens) in "
        f"{time.monotonic() - started:.0f} s"
    )
    return Base(path, seed, events, citizens, now)


def read_datums(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a container file as fastavro decodes them (a payload is a
    (record name, dict) pair, as `to_avro_datum` makes it and the writer takes it back)."""
    with path.open("rb") as handle:
        # RegistryEvent records: dicts, never another of the types fastavro may return.
        yield from cast(Iterator[dict[str, Any]], fastavro.reader(handle, return_record_name=True))


def base_flags(base: Base, now: datetime, cache_dir: Path) -> bytes:
    """One byte per base event (VALID, FIRST, NEW_CITIZEN) as the rules judge it `now`.

    Some invalid events are dated days ahead of the simulator's clock and become valid as
    the calendar catches up: the verdicts are kept per day, not once for all."""
    path = cache_dir / f"{base.path.stem}.flags-{now.date().isoformat()}"
    if path.exists():
        return path.read_bytes()
    flags = bytearray(base.events)
    rows: set[tuple[str, str]] = set()
    pins: set[str] = set()
    for index, datum in enumerate(read_datums(base.path)):
        event = from_avro_datum(m.RegistryEvent, datum)
        pin = event.subject_pin
        try:
            checked = check_event(event, pin.encode() if pin else None, now, SKEW)
        except RuleViolation:
            continue
        row = (checked.subject_pin or "", checked.event_id)
        flag = VALID
        if row not in rows:
            rows.add(row)
            flag |= FIRST
        if checked.subject_pin and checked.subject_pin not in pins:
            pins.add(checked.subject_pin)
            flag |= NEW_CITIZEN
        flags[index] = flag
    path.write_bytes(bytes(flags))
    return bytes(flags)


# --------------------------------------------------------------------------- remapping


def _is_pin_shaped(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == _PIN_LENGTH and value.isascii() and value.isdigit()
    )


class PinRemap:
    """Copy k's PIN for each 12-digit PIN of the base: same first 6 digits, another serial.

    For each 6-digit prefix with n PINs in the base (serials u_0 < … < u_{n-1}), the serials
    the base does not use are listed in order, f_0 < f_1 < …; copy k (k ≥ 1) gives u_r the
    serial f_{(k-1)·n + r}. Within a copy the map is one to one (distinct r, distinct f);
    two copies use disjoint runs of f; no f is a base serial. Copy 0 is the base itself.
    A value that is not 12 ASCII digits (a malformed PIN of an invalid event) stays as is.
    """

    def __init__(self, pins: set[str], copies: int) -> None:
        groups: dict[str, list[int]] = {}
        for pin in pins:
            groups.setdefault(pin[:6], []).append(int(pin[6:]))
        self.copies = copies
        self._rank: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._free: dict[str, array[int]] = {}
        for prefix, serials in groups.items():
            serials.sort()
            used = set(serials)
            needed = (copies - 1) * len(serials)
            if len(serials) + needed > _SERIALS:
                raise ValueError(
                    f"{len(serials):,} PINs share the prefix {prefix[:3]}…; {copies} copies "
                    f"need more than {_SERIALS:,} serials: take a larger base block"
                )
            free = array("l")
            serial = 0
            while len(free) < needed:
                if serial not in used:
                    free.append(serial)
                serial += 1
            self._free[prefix] = free
            self._count[prefix] = len(serials)
            for rank, used_serial in enumerate(serials):
                self._rank[f"{prefix}{used_serial:06d}"] = rank

    def __call__(self, pin: str, copy: int) -> str:
        rank = self._rank.get(pin) if copy else None
        if rank is None:
            return pin
        prefix = pin[:6]
        return f"{prefix}{self._free[prefix][(copy - 1) * self._count[prefix] + rank]:06d}"

    def check(self) -> int:
        """Assert that every copy's PINs are distinct from each other's and from the base's
        (what the construction guarantees); the number of distinct PINs over all copies."""
        by_prefix: dict[str, list[str]] = {}
        for pin in self._rank:
            by_prefix.setdefault(pin[:6], []).append(pin)
        total = 0
        for prefix, pins in by_prefix.items():
            seen = {int(pin[6:]) for pin in pins}
            for copy in range(1, self.copies):
                seen.update(int(self(pin, copy)[6:]) for pin in pins)
            assert len(seen) == self.copies * len(pins), f"PINs of prefix {prefix} collide"
            assert all(0 <= serial < _SERIALS for serial in seen)
            total += len(seen)
        return total


class IdRemap:
    """Copy k's event or correlation id: a version-8 UUID holding (k, ordinal of the id in
    the base). One to one within a copy, disjoint between copies, and disjoint from the
    base's ids, which are all version-4 UUIDs (checked when they are counted)."""

    def __init__(self) -> None:
        self._ordinal: dict[str, int] = {}

    def add(self, identifier: str) -> None:
        if identifier in self._ordinal:
            return
        try:
            version = uuid.UUID(identifier).version if len(identifier) == 36 else None
        except ValueError:
            version = None
        if version != 4:
            raise ValueError("the base's ids must be version-4 UUIDs in canonical form")
        self._ordinal[identifier] = len(self._ordinal)

    def __len__(self) -> int:
        return len(self._ordinal)

    def __call__(self, identifier: str, copy: int) -> str:
        if not copy:
            return identifier
        return _v8(copy, self._ordinal[identifier])


def _v8(copy: int, ordinal: int) -> str:
    # time_low: the copy (32 bits); time_mid, then the version nibble 8; clock_seq with the
    # RFC 4122 variant; node: the ordinal (48 bits).
    assert 0 < copy < 2**32 and 0 <= ordinal < 2**48
    value = (copy << 96) | (0x8000 << 64) | (0x8000 << 48) | ordinal
    return str(uuid.UUID(int=value))


# Payload fields that hold a PIN, by payload record; CMND-style legacy ids (9 digits) are
# refused, as nothing here maps them (the simulator makes none).
_PIN_FIELDS = {
    "vn.gov.popsync.BirthRegistered": ("father_pin", "mother_pin"),
    "vn.gov.popsync.MarriageRegistered": ("spouse_pin",),
    "vn.gov.popsync.DivorceRecorded": ("spouse_pin",),
    "vn.gov.popsync.CivilStatusChanged": ("previous_pin",),
    "vn.gov.popsync.SectorRecordRegistered": ("legacy_id",),
}
_CARD = "vn.gov.popsync.IdCardIssued"


def _pins_of(datum: dict[str, Any]) -> Iterator[str]:
    """Every PIN-shaped value of an event; ValueError for a legacy id that is not one."""
    for value in (datum["subject_pin"], datum["subject_legacy_id"]):
        if value is not None:
            yield value
    name, payload = datum["payload"]
    for field in _PIN_FIELDS.get(name, ()):
        if payload[field] is not None:
            yield payload[field]
    if name == _CARD:
        yield payload["card"]["card_number"]
        if payload["previous_id_number"] is not None:
            yield payload["previous_id_number"]


@dataclass
class Remap:
    pins: PinRemap
    ids: IdRemap

    def apply(self, datum: dict[str, Any], copy: int) -> dict[str, Any]:
        """`datum` (changed in place) as copy `copy` has it."""
        if not copy:
            return datum
        pin = self.pins
        datum["event_id"] = self.ids(datum["event_id"], copy)
        if datum["correlation_id"] is not None:
            datum["correlation_id"] = self.ids(datum["correlation_id"], copy)
        for key in ("subject_pin", "subject_legacy_id"):
            if datum[key] is not None:
                datum[key] = pin(datum[key], copy)
        name, payload = datum["payload"]
        for field in _PIN_FIELDS.get(name, ()):
            if payload[field] is not None:
                payload[field] = pin(payload[field], copy)
        if name == _CARD:
            card = payload["card"]
            card["card_number"] = pin(card["card_number"], copy)
            if payload["previous_id_number"] is not None:
                payload["previous_id_number"] = pin(payload["previous_id_number"], copy)
        return datum


def remap_for(base: Base, copies: int) -> tuple[Remap, int]:
    """The remapping of `copies` copies of the base; also the number of distinct PINs over
    them all. ValueError if the base holds an identifier this cannot remap."""
    pins: set[str] = set()
    ids = IdRemap()
    for datum in read_datums(base.path):
        ids.add(datum["event_id"])
        if datum["correlation_id"] is not None:
            ids.add(datum["correlation_id"])
        for value in _pins_of(datum):
            if _is_pin_shaped(value):
                pins.add(value)
            elif value.isdigit() and len(value) == 9:
                raise ValueError("the base holds a 9-digit legacy id: no remapping for those")
    remap = Remap(PinRemap(pins, copies), ids)
    return remap, remap.pins.check()


# --------------------------------------------------------------------------- the archive


@dataclass(frozen=True)
class Archive:
    directory: Path
    files: list[Path]  # one per registry kind, each signed beside it (FILE.sig)
    events: int
    seed: int
    base_events: int
    copies: int
    by_registry: dict[str, int]
    distinct_pins: int  # PIN-shaped values over all copies (subjects, parents, spouses, …)
    generated_seconds: float | None  # None: found in the cache

    def expected(self, flags: bytes) -> dict[str, int]:
        """What the rules accept in this archive, from the base block's `flags` (the same
        verdict for every copy): valid records, history rows, distinct subject PINs."""
        whole, rest = divmod(self.events, self.base_events)
        counts = {}
        for name, bit in (("valid", VALID), ("history_rows", FIRST), ("citizens", NEW_CITIZEN)):
            per_block = sum(1 for flag in flags if flag & bit)
            head = sum(1 for flag in flags[:rest] if flag & bit)
            counts[name] = whole * per_block + head
        return counts


def archive_dir(cache_dir: Path, events: int, seed: int, base_events: int) -> Path:
    return cache_dir / f"backfill-{seed}-{events}-b{base_events}"


def load_or_generate(
    events: int,
    seed: int,
    cache_dir: Path,
    base_events: int = BASE_EVENTS,
    say: Callable[[str], None] = print,
) -> tuple[Archive, Base]:
    """The signed archive of `events` events (generated once, kept in `cache_dir`)."""
    base_events = min(base_events, events)
    base = load_or_simulate_base(base_events, seed, cache_dir, say)
    directory = archive_dir(cache_dir, events, seed, base_events)
    manifest = directory / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text(encoding="utf-8"))
        files = [directory / name for name in found["files"]]
        if all(f.exists() for f in files):
            _sign(files)
            return _archive(directory, found, None), base
    started = time.monotonic()
    copies = math.ceil(events / base_events)
    remap, distinct_pins = remap_for(base, copies)
    directory.mkdir(parents=True, exist_ok=True)
    by_registry = _write(base, remap, events, directory)
    files = sorted(directory / f"{kind}.avro" for kind in by_registry)
    _sign(files)
    seconds = time.monotonic() - started
    found = {
        "events": events,
        "seed": seed,
        "base_events": base_events,
        "copies": copies,
        "by_registry": by_registry,
        "distinct_pins": distinct_pins,
        "files": [f.name for f in files],
        "generated_seconds": round(seconds, 1),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {events:,} events ({copies} copies of the base) in {seconds:.0f} s")
    return _archive(directory, found, seconds), base


def _archive(directory: Path, found: dict[str, Any], seconds: float | None) -> Archive:
    return Archive(
        directory=directory,
        files=[directory / name for name in found["files"]],
        events=found["events"],
        seed=found["seed"],
        base_events=found["base_events"],
        copies=found["copies"],
        by_registry=found["by_registry"],
        distinct_pins=found["distinct_pins"],
        generated_seconds=seconds,
    )


def _write(base: Base, remap: Remap, events: int, directory: Path) -> dict[str, int]:
    """Copy after copy of the base, each record into its registry's file; the counts."""
    schema = registry_events_schema()
    handles: dict[str, BinaryIO] = {}
    writers: dict[str, Writer] = {}
    counts: dict[str, int] = {}
    written = 0
    try:
        for copy in range(math.ceil(events / base.events)):
            for datum in read_datums(base.path):
                if written == events:
                    break
                kind = datum["source_registry"]
                writer = writers.get(kind)
                if writer is None:
                    handles[kind] = (directory / f"{kind}.avro.tmp").open("wb")
                    writer = writers[kind] = Writer(handles[kind], schema, codec="deflate")
                writer.write(remap.apply(datum, copy))
                counts[kind] = counts.get(kind, 0) + 1
                written += 1
        for writer in writers.values():
            writer.flush()
    finally:
        for handle in handles.values():
            handle.close()
    for kind in handles:
        (directory / f"{kind}.avro.tmp").replace(directory / f"{kind}.avro")
    return dict(sorted(counts.items()))


def _sign(files: list[Path]) -> None:
    """Each file signed by its registry's development publisher (FILE.sig beside it); done
    on every use, not cached (a second or two), so a signature is always of today's form."""
    for path in files:
        sign_archive(path, dev_signer(m.SourceRegistry(path.stem)))
