"""The backfill benchmark's archive: copies of a simulated block are other citizens (PINs
with the same first 6 digits and serials of their own, ids of their own), re-sent events
stay re-sent, invalid ones invalid, and each file holds one registry's records, signed."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import pytest

from bench.backfill import archive as arc
from popsync.contract import models as m
from popsync.contract.codec import from_avro_datum
from popsync.domain.rules import RuleViolation, check_event


def test_each_copy_gives_each_pin_a_serial_no_other_copy_and_no_original_has() -> None:
    pins = {"079200000001", "079200000002", "079200000004", "001185123456", "079300000001"}
    remap = arc.PinRemap(pins, copies=4)
    assert remap.check() == 4 * len(pins)
    seen = set(pins)
    for copy in range(1, 4):
        mapped = {remap(pin, copy) for pin in pins}
        assert all(remap(pin, copy)[:6] == pin[:6] for pin in pins)
        assert len(mapped) == len(pins) and not mapped & seen
        seen |= mapped
    assert remap("079200000001", 0) == "079200000001"
    assert remap("07920000001", 2) == "07920000001"  # not a PIN (an invalid event's): as is


def test_a_prefix_without_room_for_the_copies_is_refused() -> None:
    crowded = {f"079200{serial:06d}" for serial in range(0, 1_000_000, 2)}
    with pytest.raises(ValueError, match="take a larger base block"):
        arc.PinRemap(crowded, copies=3)


def test_ids_become_version_8_uuids_of_their_copy() -> None:
    ids = arc.IdRemap()
    first, second = "022e14ee-24cd-4b77-b50b-5ec5cc51f9ee", "3f25568d-4967-4618-8740-9b81b60fe383"
    ids.add(first)
    ids.add(second)
    ids.add(first)
    assert len(ids) == 2 and ids(first, 0) == first
    mapped = {ids(identifier, copy) for identifier in (first, second) for copy in (1, 2, 3)}
    assert len(mapped) == 6 and all(len(i) == 36 and i[14] == "8" for i in mapped)
    with pytest.raises(ValueError, match="version-4"):
        ids.add("not-an-id-of-the-simulator's-kind")


def test_the_archive_is_copies_of_the_block_with_other_citizens(tmp_path: Path) -> None:
    archive, base = arc.load_or_generate(1_500, seed=7, cache_dir=tmp_path, base_events=600)
    assert (archive.events, archive.copies, base.events) == (1_500, 3, 600)
    assert sum(archive.by_registry.values()) == 1_500
    ids: Counter[str] = Counter()
    subjects: set[str] = set()
    valid = 0
    now = datetime.now(UTC)
    for path in archive.files:
        assert path.with_name(path.name + ".sig").exists()
        for datum in arc.read_datums(path):
            assert datum["source_registry"] == path.stem
            ids[datum["event_id"]] += 1
            event = from_avro_datum(m.RegistryEvent, datum)
            pin = event.subject_pin
            try:
                check_event(event, pin.encode() if pin else None, now, arc.SKEW)
            except RuleViolation:
                continue
            valid += 1
            subjects.add(pin or "")
    base_ids = Counter(datum["event_id"] for datum in arc.read_datums(base.path))
    resent = sum(n - 1 for n in base_ids.values())
    head_ids = Counter(datum["event_id"] for datum in islice(arc.read_datums(base.path), 300))
    assert sum(n - 1 for n in ids.values()) == 2 * resent + sum(n - 1 for n in head_ids.values())
    expected = archive.expected(arc.base_flags(base, now, tmp_path))
    assert expected["valid"] == valid and expected["citizens"] == len(subjects)
    # A second call finds it in the cache.
    again, _ = arc.load_or_generate(1_500, seed=7, cache_dir=tmp_path, base_events=600)
    assert again.generated_seconds is None and again.files == archive.files
