"""`popsync publishers …` and `popsync keys …`: the publisher directory, by operators.

A publisher is one registry in one scope (kind, provinces, event types); it signs its
events with Ed25519 keys (`popsync.trust.signing`) registered here by their public half,
each with a validity window. Every change is written with one `publisher_audit` row (who,
what, when; never a secret). Output is one line per item: ids, kinds, codes, times, public
keys in base64; a private key is only ever written to its 0600 file, never printed.

Rotation: `keys rotate` writes a new key file and registers its key from now; the old keys
stay valid until their own window ends (sooner with `--old-valid-until`), so events signed
before the new file is deployed still verify. Then `keys revoke` the old one.

Exit codes (`popsync.ops.failures`): 0 done; 1 refused by the directory as it stands
(unknown or revoked publisher or key, a taken id); 2 usage (a bad province, an event type
the kind is not the authority for, a bad key, an output file that exists).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from popsync.adapters.postgres import publishers as directory
from popsync.adapters.postgres.database import operator_connection
from popsync.adapters.postgres.publishers import (
    InvalidEntry,
    NewKey,
    PublisherEntry,
)
from popsync.contract import models as m
from popsync.ops import failures
from popsync.ops.review import ReviewError, operator_name
from popsync.settings import Settings
from popsync.trust.identity import PublisherKey
from popsync.trust.signing import Signer, SigningKeyError, load_signer


def kind_name(kind: m.SourceRegistry) -> str:
    """As the command line spells a kind: civil-status."""
    return kind.value.lower().replace("_", "-")


def kind_of(name: str) -> m.SourceRegistry:
    return m.SourceRegistry(name.upper().replace("-", "_"))


def _when(moment: datetime | None) -> str:
    return "open" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_key_id(publisher_id: str, now: datetime) -> str:
    return f"{publisher_id}-{now.astimezone(UTC):%Y%m%d%H%M%S}"


def key_state(key: PublisherKey, now: datetime) -> str:
    if key.revoked_by(now):
        return f"revoked {_when(key.revoked_at)}"
    if now < key.valid_from:
        return "not yet valid"
    return "usable" if key.in_window(now) else "expired"


def describe_key(key: PublisherKey, now: datetime) -> str:
    """One line per key: its window, its state now and its public half."""
    return (
        f"key {key.key_id}  {key_state(key, now)}  valid {_when(key.valid_from)} .. "
        f"{_when(key.valid_until)}  ed25519 {base64.b64encode(key.public_key).decode()}"
    )


def describe_publisher(entry: PublisherEntry, now: datetime) -> str:
    """One line per publisher: scope, state, keys usable now."""
    p = entry.publisher
    state = "active" if p.revoked_at is None else f"revoked {_when(p.revoked_at)}"
    usable = sum(1 for key in entry.keys if key.usable_at(now))
    return (
        f"{p.publisher_id}  {kind_name(p.kind)}  provinces {','.join(sorted(p.provinces))}  "
        f"{state}  since {_when(entry.created_at)}  keys {len(entry.keys)} ({usable} usable)  "
        f"event types {','.join(sorted(p.event_types))}"
    )


def _judged(action: Callable[[], int], err: TextIO) -> int:
    return failures.judged(action, err, usage=(InvalidEntry, ReviewError, SigningKeyError))


# ----------------------------------------------------------------------------- publishers


@dataclass(frozen=True)
class PublisherRequest:
    publisher_id: str
    kind: m.SourceRegistry
    provinces: Sequence[str]
    event_types: Sequence[str] = ()


def _event_type(name: str) -> m.EventType:
    try:
        return m.EventType(name.upper())
    except ValueError:
        raise InvalidEntry(f"unknown event type {name!r}") from None


def add_publisher(
    settings: Settings,
    request: PublisherRequest,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        types = [_event_type(name) for name in request.event_types]
        entry = directory.publisher_entry(
            request.publisher_id, request.kind, request.provinces, types
        )
        with operator_connection(settings.postgres) as conn:
            directory.add_publisher(conn, entry, who)
        print(
            f"added publisher {entry.publisher_id}  {kind_name(entry.kind)}  provinces "
            f"{','.join(sorted(entry.provinces))}  event types "
            f"{','.join(sorted(entry.event_types))}",
            file=out,
        )
        return failures.EXIT_OK

    return _judged(run, err)


def list_publishers(settings: Settings, *, out: TextIO) -> int:
    with operator_connection(settings.postgres) as conn:
        entries = directory.list_publishers(conn)
    now = datetime.now(UTC)
    active = sum(1 for entry in entries if entry.publisher.revoked_at is None)
    print(f"{active} publisher(s) active, {len(entries) - active} revoked", file=out)
    for entry in entries:
        print(describe_publisher(entry, now), file=out)
    return failures.EXIT_OK


def show_publisher(settings: Settings, publisher_id: str, *, out: TextIO, err: TextIO) -> int:
    with operator_connection(settings.postgres) as conn:
        entry = directory.find_publisher(conn, publisher_id)
    if entry is None:
        print(f"popsync: no publisher {publisher_id!r} (see `popsync publishers list`)", file=err)
        return failures.EXIT_REFUSED
    now = datetime.now(UTC)
    print(describe_publisher(entry, now), file=out)
    for key in entry.keys:
        print(describe_key(key, now), file=out)
    return failures.EXIT_OK


def revoke_publisher(
    settings: Settings,
    publisher_id: str,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        with operator_connection(settings.postgres) as conn:
            keys = directory.revoke_publisher(conn, publisher_id, who)
        revoked = ", ".join(keys) or "none"
        print(f"revoked publisher {publisher_id} and its keys from now: {revoked}", file=out)
        return failures.EXIT_OK

    return _judged(run, err)


# ----------------------------------------------------------------------------------- keys


def _write_key_file(signer: Signer, path: Path) -> None:
    """The private key, to a new 0600 file only (`Signer.save`): an existing file is kept."""
    try:
        signer.save(path)
    except FileExistsError:
        raise failures.UsageError(f"{path} exists: a key file is never overwritten") from None
    except OSError as exc:
        raise failures.UsageError(f"cannot write {path}: {exc.strerror}") from None


def _public_line(signer: Signer) -> str:
    return f"public key {signer.key_id} {base64.b64encode(signer.public_key).decode()}"


def generate_key(publisher_id: str, key_id: str | None, output: Path, *, out: TextIO) -> int:
    """Write a new key file (no database): the registry keeps it, operators add its public
    half (`keys add --public-key`)."""
    try:
        directory.checked_id(publisher_id, "publisher id")
        kid = directory.checked_id(
            key_id or default_key_id(publisher_id, datetime.now(UTC)), "key id"
        )
    except InvalidEntry as exc:
        raise failures.UsageError(str(exc)) from None
    signer = Signer.generate(publisher_id, kid)
    _write_key_file(signer, output)
    print(f"wrote key {kid} of {publisher_id} to {output} (mode 0600)", file=out)
    print(_public_line(signer), file=out)
    return failures.EXIT_OK


@dataclass(frozen=True)
class KeyRequest:
    """`keys add`: the public key in base64, or a key file to take the public half of."""

    publisher_id: str
    public_key: str | None = None
    key_file: Path | None = None
    key_id: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None


def _decoded(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEntry("--public-key is not base64") from None


def _from_key_file(request: KeyRequest, path: Path) -> tuple[str, bytes]:
    """The key id and public half of a key file, which must be the publisher's."""
    signer = load_signer(path)
    if signer.publisher_id != request.publisher_id:
        raise InvalidEntry(
            f"{path} is a key of {signer.publisher_id!r}, not {request.publisher_id!r}"
        )
    if request.key_id is not None and request.key_id != signer.key_id:
        raise InvalidEntry(f"{path} signs as key {signer.key_id!r}, not {request.key_id!r}")
    return signer.key_id, signer.public_key


def new_key(request: KeyRequest, now: datetime) -> NewKey:
    """The checked key to register."""
    if request.key_file is not None:
        key_id, public_key = _from_key_file(request, request.key_file)
    elif request.public_key is not None:
        key_id = request.key_id or default_key_id(request.publisher_id, now)
        public_key = _decoded(request.public_key)
    else:
        raise InvalidEntry("give the key: --public-key BASE64 or --key-file FILE")
    start = request.valid_from or now
    if request.valid_until is not None and request.valid_until <= start:
        raise InvalidEntry("--valid-until must come after the key's start")
    return NewKey(
        directory.checked_id(key_id, "key id"),
        directory.public_key_bytes(public_key),
        request.valid_from,
        request.valid_until,
    )


def _added_line(key: PublisherKey) -> str:
    return (
        f"added key {key.key_id} to {key.publisher_id}  valid {_when(key.valid_from)} .. "
        f"{_when(key.valid_until)}  fingerprint {directory.fingerprint(key.public_key)}"
    )


def add_key(
    settings: Settings,
    request: KeyRequest,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        key = new_key(request, datetime.now(UTC))
        with operator_connection(settings.postgres) as conn:
            added = directory.add_key(conn, request.publisher_id, key, who)
        print(_added_line(added), file=out)
        return failures.EXIT_OK

    return _judged(run, err)


def rotate_key(
    settings: Settings,
    publisher_id: str,
    output: Path,
    operator: str | None,
    old_valid_until: datetime | None = None,
    key_id: str | None = None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    """Write a new key file and register its key from now; the old keys stay valid until
    their window ends, or `old_valid_until` if sooner. The file is written first (never
    over another), so that a key is registered only once its private half is on disk, and
    removed if registering fails."""

    def run() -> int:
        who = operator_name(operator)
        now = datetime.now(UTC)
        if old_valid_until is not None and old_valid_until <= now:
            raise InvalidEntry(
                "--old-valid-until is past: to end a key now, `popsync keys revoke KEY_ID`"
            )
        directory.checked_id(publisher_id, "publisher id")
        kid = directory.checked_id(key_id or default_key_id(publisher_id, now), "key id")
        signer = Signer.generate(publisher_id, kid)
        key = NewKey(signer.key_id, signer.public_key)
        _write_key_file(signer, output)
        try:
            with operator_connection(settings.postgres) as conn:
                rotation = directory.rotate(conn, publisher_id, key, who, old_valid_until)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
        print(f"wrote key {signer.key_id} of {publisher_id} to {output} (mode 0600)", file=out)
        print(_added_line(rotation.new), file=out)
        for old in rotation.old:
            print(f"old {describe_key(old, now)}", file=out)
        return failures.EXIT_OK

    return _judged(run, err)


def revoke_key(
    settings: Settings,
    key_id: str,
    operator: str | None,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    def run() -> int:
        who = operator_name(operator)
        with operator_connection(settings.postgres) as conn:
            publisher_id = directory.revoke_key(conn, key_id, who)
        print(f"revoked key {key_id} of {publisher_id} from now", file=out)
        return failures.EXIT_OK

    return _judged(run, err)
