"""The store the benchmark reads: N synthetic citizens COPYed into `citizens`, and the
questions the load asks about them.

Citizens are drawn from a seed with the simulator's name and geography tables
(`popsync.dev.simulate`): Vietnamese names with their diacritics and frequencies, a birth
province (pre-2025 codes too, as PINs carry them), a PIN made from it with the birth year
and sex (`make_pin`), the current province and a commune of residence. Rows go in with one
binary COPY, in chunks, then `VACUUM ANALYZE` (so index-only visibility and plans are those
of a settled table, not of a fresh load).

The questions are drawn from the store itself (so a cached database serves any later run):
mostly existing PINs with their true name and birth date, some with the name typed without
diacritics, some with another name or another birth date, and some valid PINs that no
citizen has.
"""

from __future__ import annotations

import datetime
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from popsync.adapters.postgres.citizens import CITIZEN_COLUMNS
from popsync.adapters.postgres.database import schema_sql
from popsync.dev.simulate._random import below, between_ints
from popsync.dev.simulate.geography import commune_code, current_of, pick_ethnicity, pick_unit
from popsync.dev.simulate.names import random_full_name
from popsync.domain.names import fold_for_matching
from popsync.domain.pin import Sex, make_pin

# Every column of `citizens` but updated_at (its default), with its type, for COPY: the
# store's own list.
COLUMNS = CITIZEN_COLUMNS
FIRST_YEAR, LAST_YEAR = 1930, 2024
TODAY = datetime.date(2025, 12, 1)
LOADED_AT = datetime.datetime(2025, 12, 1, 9, tzinfo=datetime.UTC)
_CHUNK = 50_000
_MARKER = "bench-verify.json"  # beside the data: what the cached database holds


@dataclass(frozen=True)
class Seeded:
    citizens: int
    seed: int
    seconds: float  # 0.0: found in the cache
    cached: bool


def citizen_rows(count: int, seed: int) -> Iterator[tuple[Any, ...]]:
    """`count` citizens, in the order of COLUMNS; each PIN distinct."""
    rng = random.Random(seed)
    taken: set[str] = set()
    for n in range(count):
        unit = pick_unit(rng)  # where the birth was registered: the PIN's prefix
        sex: Sex = "M" if rng.random() < 0.5 else "F"
        year = between_ints(rng, FIRST_YEAR, LAST_YEAR)
        born = datetime.date(year, 1, 1) + datetime.timedelta(days=below(rng, 365))
        pin = make_pin(f"0{unit}", sex, year, below(rng, 1_000_000)).value
        while pin in taken:
            pin = make_pin(f"0{unit}", sex, year, below(rng, 1_000_000)).value
        taken.add(pin)
        birth_province = current_of(unit)
        ethnicity = pick_ethnicity(rng, birth_province)
        name = random_full_name(rng, sex, ethnicity=ethnicity, birth_year=year)
        home = unit if rng.random() < 0.85 else pick_unit(rng, "migration")
        temporary = pick_unit(rng, "migration") if rng.random() < 0.1 else None
        age = TODAY.year - year
        died = None
        if rng.random() < (0.02 if age < 60 else 0.08 if age < 80 else 0.4):
            died = born + datetime.timedelta(days=below(rng, max((TODAY - born).days, 1)))
        yield (
            pin,
            1,
            name,
            born,
            sex,
            ethnicity,
            "VN",
            birth_province,
            _marital(rng, age),
            None,
            "ALIVE" if died is None else "DECEASED",
            died,
            current_of(home),
            commune_code(rng, home),
            None if temporary is None else current_of(temporary),
            None if temporary is None else commune_code(rng, temporary),
            pin if age >= 14 else None,  # the chip ID card's number is the PIN
            "{}",
            f"bench-{n}",
            LOADED_AT,
        )


def _marital(rng: random.Random, age: int) -> str:
    if age < 18:
        return "SINGLE"
    draw = rng.random()
    return "MARRIED" if draw < 0.6 else "SINGLE" if draw < 0.9 else "DIVORCED"


def seed_store(dsn: str, count: int, seed: int, marker_dir: Path) -> Seeded:
    """The schema, and `count` citizens of `seed` in `citizens`, unless the database holds
    them already (a kept --workdir)."""
    marker = marker_dir / _MARKER
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema_sql().encode())  # idempotent: also brings a cached db up to date
        if marker.exists() and json.loads(marker.read_text()) == {"citizens": count, "seed": seed}:
            row = conn.execute("SELECT count(*) FROM citizens").fetchone()
            if row is not None and row[0] == count:
                return Seeded(count, seed, 0.0, cached=True)
        marker.unlink(missing_ok=True)
        started = time.perf_counter()
        conn.execute("TRUNCATE citizens")
        query = f"COPY citizens ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        rows = citizen_rows(count, seed)
        with conn.transaction(), conn.cursor() as cur, cur.copy(query) as copy:
            copy.set_types(list(COLUMNS.values()))
            for row in rows:
                copy.write_row(row)
        conn.execute("VACUUM (ANALYZE) citizens")
        seconds = time.perf_counter() - started
    marker.write_text(json.dumps({"citizens": count, "seed": seed}))
    return Seeded(count, seed, round(seconds, 1), cached=False)


# ------------------------------------------------------------------------------ questions


@dataclass(frozen=True)
class Mix:
    """Shares of the questions asked (the rest: the true name and birth date)."""

    folded_name: float = 0.05  # the true name typed without diacritics: still a match
    other_name: float = 0.05  # another citizen's name, the true birth date: partial
    other_date: float = 0.05  # the true name, another birth date: partial
    missing: float = 0.05  # a valid PIN no citizen has: every attribute no_match


def questions(dsn: str, count: int, seed: int, mix: Mix | None = None) -> list[dict[str, str]]:
    """`count` verification bodies about citizens sampled from the store, shuffled."""
    mix = mix or Mix()
    rng = random.Random(seed + 1)
    with psycopg.connect(dsn) as conn:
        total = _count(conn)
        percent = min(100.0, 100.0 * count * 1.3 / max(total, 1))
        rows = conn.execute(
            "SELECT pin, full_name, birth_date FROM citizens"
            " TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) LIMIT %s",
            (percent, seed, count),
        ).fetchall()
        if not rows:
            raise RuntimeError("the store holds no citizens to ask about")
        missing = _missing_pins(conn, rng, int(count * mix.missing))
    bodies: list[dict[str, str]] = []
    names = [row[1] for row in rows]
    for n in range(count - len(missing)):
        pin, name, born = rows[n % len(rows)]
        draw = rng.random()
        if draw < mix.folded_name:
            name = fold_for_matching(name)
        elif draw < mix.folded_name + mix.other_name:
            name = names[below(rng, len(names))]
        elif draw < mix.folded_name + mix.other_name + mix.other_date:
            born = born + datetime.timedelta(days=1 + below(rng, 300))
        bodies.append({"pin": pin, "full_name": name, "birth_date": born.isoformat()})
    for pin in missing:
        name = names[below(rng, len(names))]
        bodies.append({"pin": pin, "full_name": name, "birth_date": "1990-05-17"})
    rng.shuffle(bodies)
    return bodies


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM citizens").fetchone()
    return 0 if row is None else int(row[0])


def _missing_pins(conn: psycopg.Connection[Any], rng: random.Random, count: int) -> list[str]:
    """`count` well-formed PINs that no citizen has."""
    found: set[str] = set()
    while len(found) < count:
        drawn = {
            make_pin(f"0{pick_unit(rng)}", "F", 1990, below(rng, 1_000_000)).value
            for _ in range(count - len(found))
        }
        taken = conn.execute("SELECT pin FROM citizens WHERE pin = ANY(%s)", (list(drawn),))
        found |= drawn - {row[0] for row in taken}
    return sorted(found)


def write_questions(path: Path, bodies: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(body, ensure_ascii=False) + "\n" for body in bodies))


def read_questions(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
