"""Loads the Avro contract from `schemas/avro/`, the single source of truth.

Every other representation (pydantic models, codecs, topic payloads) derives
from these files; nothing here restates a field by hand.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

NAMESPACE = "vn.gov.popsync"
SCHEMA_DIR_ENV = "POPSYNC_SCHEMA_DIR"

# Records that travel on a topic on their own; the others are parts of them.
TOP_LEVEL_RECORDS = (
    "RegistryEvent",
    "CitizenUpdate",
    "MergeConflict",
    "DeadLetter",
    "IdentityAssigned",
    "MatchReview",
    "UnmatchedRecord",
)


def schema_dir() -> Path:
    """Where the `.avsc` files are: `$POPSYNC_SCHEMA_DIR`, else the repository's."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "schemas" / "avro"


def full_name(name: str) -> str:
    return name if "." in name else f"{NAMESPACE}.{name}"


def short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ContractSchema:
    """One top-level schema, parsed, with its single-object fingerprint."""

    name: str
    parsed: Any
    fingerprint: bytes

    @property
    def canonical_form(self) -> str:
        return str(to_parsing_canonical_form(self.parsed))


def raw_schema(name: str) -> dict[str, Any]:
    """The JSON of one `.avsc` file as written (with docs), for codegen and tests."""
    path = schema_dir() / f"{full_name(name)}.avsc"
    with path.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def all_schema_names() -> list[str]:
    """Short names of every named type in the contract, sorted."""
    return sorted(short_name(p.name.removesuffix(".avsc")) for p in schema_dir().glob("*.avsc"))


@functools.cache
def contract_schema(name: str) -> ContractSchema:
    parsed = load_schema(str(schema_dir() / f"{full_name(name)}.avsc"))
    canonical = to_parsing_canonical_form(parsed)
    digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return ContractSchema(name=short_name(name), parsed=parsed, fingerprint=digest)


PREVIOUS_DIR = "previous"


@functools.cache
def earlier_versions(name: str) -> tuple[ContractSchema, ...]:
    """Earlier writer versions of a top-level record that readers must still resolve.

    A changed schema changes the fingerprint in every value written with it, so when a
    record gains a field, the version it replaces is kept under `previous/` as one
    self-contained schema (`<full name>.v<N>.avsc`, the types it uses inlined): records
    written before the change (a compacted topic keeps them) stay readable.
    """
    found = []
    for path in sorted((schema_dir() / PREVIOUS_DIR).glob(f"{full_name(name)}.v*.avsc")):
        parsed = parse_schema(json.loads(path.read_text(encoding="utf-8")))
        canonical = to_parsing_canonical_form(parsed)
        digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        found.append(ContractSchema(name=short_name(name), parsed=parsed, fingerprint=digest))
    return tuple(found)
