"""Signed archives (`popsync.trust.archives`): the detached signature of a whole file,
checked against the directory before a record is read, and each record's authority judged
by the archive's verified signer with the stream's reasons."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime.messages import InboundMessage
from popsync.trust.archives import (
    ArchiveDigest,
    ArchiveRefused,
    ArchiveVerifier,
    archive_topic,
    digest_of,
    sign_archive,
    signature_path,
    signed_archive_bytes,
    verify_archive,
)
from popsync.trust.identity import Publisher, PublisherKey, SigningIdentity
from popsync.trust.signing import Signer
from popsync.trust.verification import TrustViolation
from tests.builders import PIN, birth_event

EVENTS = Codec(m.RegistryEvent)
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
GRACE = timedelta(hours=1)
CIVIL_79 = Publisher(
    "civil-status-79",
    m.SourceRegistry.CIVIL_STATUS,
    frozenset({"79"}),
    frozenset({m.EventType.BIRTH_REGISTERED, m.EventType.DEATH_REGISTERED}),
)
RESIDENCE_79 = Publisher(
    "residence-79",
    m.SourceRegistry.RESIDENCE,
    frozenset({"79"}),
    frozenset({m.EventType.PERMANENT_RESIDENCE_REGISTERED}),
)
Keys = dict[str, tuple[PublisherKey, Publisher]]


def _seed(key_id: str) -> bytes:
    return hashlib.sha256(f"test-archive-key:{key_id}".encode()).digest()


def _signer(publisher: Publisher, key_id: str) -> Signer:
    return Signer(publisher.publisher_id, key_id, _seed(key_id))


CIVIL_KEY = _signer(CIVIL_79, "civil-status-79-k1")
RESIDENCE_KEY = _signer(RESIDENCE_79, "residence-79-k1")


def _entry(
    signer: Signer,
    publisher: Publisher,
    *,
    valid_from: datetime = datetime(2020, 1, 1, tzinfo=UTC),
    valid_until: datetime | None = None,
    revoked_at: datetime | None = None,
) -> tuple[PublisherKey, Publisher]:
    key = PublisherKey(
        signer.key_id,
        publisher.publisher_id,
        signer.public_key,
        valid_from=valid_from,
        valid_until=valid_until,
        revoked_at=revoked_at,
    )
    return key, publisher


def _directory(*entries: tuple[PublisherKey, Publisher]) -> Keys:
    return {key.key_id: (key, publisher) for key, publisher in entries}


DIRECTORY = _directory(_entry(CIVIL_KEY, CIVIL_79), _entry(RESIDENCE_KEY, RESIDENCE_79))


def _archive(directory: Path, name: str = "civil-79.avro", size: int = 3000) -> Path:
    path = directory / name
    path.write_bytes(bytes((i * 7 + 3) % 256 for i in range(size)))
    return path


def _signed(tmp_path: Path, name: str = "civil-79.avro", signer: Signer = CIVIL_KEY) -> Path:
    path = _archive(tmp_path, name)
    sign_archive(path, signer)
    return path


def _refusal(path: Path, keys: Keys = DIRECTORY, now: datetime = NOW) -> str:
    """The refusal of `path`, checked to be one line naming the file, without a cause."""
    with pytest.raises(ArchiveRefused) as caught:
        verify_archive(path, keys, now, GRACE)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message and "Traceback" not in message
    assert caught.value.__cause__ is None
    return message


def _claim(path: Path) -> dict[str, Any]:
    form: dict[str, Any] = json.loads(signature_path(path).read_text(encoding="utf-8"))
    return form


def _write_claim(path: Path, form: dict[str, Any]) -> None:
    signature_path(path).write_text(json.dumps(form) + "\n", encoding="utf-8")


# --- signing and verifying ------------------------------------------------------------------


def test_a_signed_archive_verifies_to_its_signer_and_digest(tmp_path: Path) -> None:
    path = _signed(tmp_path)

    identity, digest = verify_archive(path, DIRECTORY, NOW, GRACE)

    assert identity.publisher is CIVIL_79 and identity.key.key_id == CIVIL_KEY.key_id
    assert digest.sha256 == hashlib.sha256(path.read_bytes()).digest()
    assert digest.size == path.stat().st_size == 3000


def test_the_signature_file_names_publisher_key_digest_and_signature(tmp_path: Path) -> None:
    path = _archive(tmp_path)

    written = sign_archive(path, CIVIL_KEY)

    assert written == tmp_path / "civil-79.avro.sig" == signature_path(path)
    form = _claim(path)
    assert set(form) == {"publisher", "key_id", "sha256", "size", "signature"}
    assert (form["publisher"], form["key_id"]) == ("civil-status-79", "civil-status-79-k1")
    assert form["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert form["size"] == 3000
    assert len(base64.b64decode(form["signature"], validate=True)) == 64


def test_a_file_larger_than_one_read_chunk_and_an_empty_file_verify(tmp_path: Path) -> None:
    large = _archive(tmp_path, "large.avro", size=(5 << 20) // 2)
    empty = _archive(tmp_path, "empty.avro", size=0)
    for path in (large, empty):
        sign_archive(path, CIVIL_KEY)
        assert verify_archive(path, DIRECTORY, NOW, GRACE)[1] == digest_of(path)
    assert digest_of(large).sha256 == hashlib.sha256(large.read_bytes()).digest()
    assert digest_of(empty).size == 0


def test_the_signed_bytes_are_length_prefixed_so_fields_cannot_slide() -> None:
    digest = ArchiveDigest(hashlib.sha256(b"x").digest(), 1)

    assert signed_archive_bytes(digest, "ab", "c") != signed_archive_bytes(digest, "a", "bc")


# --- a file that is not the one signed ------------------------------------------------------


def test_one_byte_changed_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    data = bytearray(path.read_bytes())
    data[1500] ^= 0x01
    path.write_bytes(bytes(data))

    assert "not the one signed" in _refusal(path)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])

    assert "not the one signed" in _refusal(path)


def test_a_file_with_bytes_appended_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    path.write_bytes(path.read_bytes() + b"\n")

    assert "not the one signed" in _refusal(path)


@pytest.mark.parametrize("field", ["size", "sha256"])
def test_the_size_or_digest_edited_in_the_signature_file_is_refused(
    tmp_path: Path, field: str
) -> None:
    path = _signed(tmp_path)
    form = _claim(path)
    form[field] = form["size"] + 1 if field == "size" else hashlib.sha256(b"other").hexdigest()
    _write_claim(path, form)

    assert "not the one signed" in _refusal(path)


def test_a_changed_file_whose_signature_file_is_edited_to_match_is_refused(
    tmp_path: Path,
) -> None:
    """The claim's digest is re-stated for the changed file: the signature then fails."""
    path = _signed(tmp_path)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    form = _claim(path)
    form["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    form["size"] = path.stat().st_size
    _write_claim(path, form)

    assert "does not verify" in _refusal(path)


def test_the_signature_of_another_file_is_refused(tmp_path: Path) -> None:
    other = _signed(tmp_path, "other.avro")
    path = _archive(tmp_path, "civil-79.avro", size=2999)
    signature_path(path).write_bytes(signature_path(other).read_bytes())

    assert "not the one signed" in _refusal(path)


def test_a_signature_moved_onto_an_identical_copy_verifies(tmp_path: Path) -> None:
    """The signature covers the bytes, not the name: a copy under another name is the same
    archive (what makes a renamed export loadable)."""
    path = _signed(tmp_path)
    copy = tmp_path / "copy.avro"
    copy.write_bytes(path.read_bytes())
    signature_path(copy).write_bytes(signature_path(path).read_bytes())

    assert verify_archive(copy, DIRECTORY, NOW, GRACE)[0].publisher is CIVIL_79


# --- who signed -------------------------------------------------------------------------------


def test_a_key_the_directory_does_not_hold_is_refused(tmp_path: Path) -> None:
    stranger = _signer(CIVIL_79, "civil-status-79-k9")
    path = _signed(tmp_path, signer=stranger)

    message = _refusal(path)

    assert "civil-status-79-k9" in message and "not in the directory" in message


def test_a_signature_file_naming_another_publisher_than_the_keys_is_refused(
    tmp_path: Path,
) -> None:
    """The residence registry's key, claimed for the civil-status registry (and signed so)."""
    impostor = Signer(CIVIL_79.publisher_id, RESIDENCE_KEY.key_id, _seed(RESIDENCE_KEY.key_id))
    path = _signed(tmp_path, signer=impostor)

    message = _refusal(path)

    assert f"key {RESIDENCE_KEY.key_id} is not civil-status-79's" in message


def test_the_publisher_edited_in_the_signature_file_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    form = _claim(path)
    form["publisher"] = RESIDENCE_79.publisher_id
    _write_claim(path, form)

    assert "is not residence-79's" in _refusal(path)


def test_the_key_id_edited_to_another_key_of_the_same_publisher_is_refused(
    tmp_path: Path,
) -> None:
    second = _signer(CIVIL_79, "civil-status-79-k2")
    keys = _directory(_entry(CIVIL_KEY, CIVIL_79), _entry(second, CIVIL_79))
    path = _signed(tmp_path)
    form = _claim(path)
    form["key_id"] = second.key_id
    _write_claim(path, form)

    assert "does not verify" in _refusal(path, keys)


def test_a_directory_key_whose_public_key_differs_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    other = Signer(CIVIL_KEY.publisher_id, CIVIL_KEY.key_id, bytes(32))
    keys = _directory(_entry(other, CIVIL_79))

    assert "does not verify" in _refusal(path, keys)


@pytest.mark.parametrize(
    ("window", "says"),
    [
        ({"revoked_at": NOW - timedelta(days=1)}, "revoked"),
        ({"revoked_at": NOW}, "revoked"),
        ({"valid_until": NOW - GRACE - timedelta(seconds=1)}, "validity window"),
        ({"valid_until": NOW - GRACE}, "validity window"),
        ({"valid_from": NOW + timedelta(days=1)}, "validity window"),
    ],
    ids=["revoked", "revoked-now", "expired-beyond-grace", "expired-at-grace", "not-yet-valid"],
)
def test_a_key_not_in_force_is_refused(
    tmp_path: Path, window: dict[str, datetime], says: str
) -> None:
    path = _signed(tmp_path)
    keys = _directory(_entry(CIVIL_KEY, CIVIL_79, **window))

    message = _refusal(path, keys)

    assert says in message and CIVIL_KEY.key_id in message


def test_a_revoked_publisher_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    revoked = Publisher(
        CIVIL_79.publisher_id,
        CIVIL_79.kind,
        CIVIL_79.provinces,
        CIVIL_79.event_types,
        revoked_at=NOW - timedelta(hours=1),
    )
    keys = _directory(_entry(CIVIL_KEY, revoked))

    assert "revoked" in _refusal(path, keys)


@pytest.mark.parametrize(
    "window",
    [
        {"valid_until": NOW - GRACE + timedelta(seconds=1)},
        {"valid_until": NOW + timedelta(days=30)},
        {"revoked_at": NOW + timedelta(seconds=1)},
        {"valid_from": NOW},
    ],
    ids=["expired-within-grace", "valid-until-later", "revoked-later", "valid-from-now"],
)
def test_a_key_in_force_at_the_time_of_the_check_is_accepted(
    tmp_path: Path, window: dict[str, datetime]
) -> None:
    path = _signed(tmp_path)
    keys = _directory(_entry(CIVIL_KEY, CIVIL_79, **window))

    assert verify_archive(path, keys, NOW, GRACE)[0].key.key_id == CIVIL_KEY.key_id


# --- the signature file itself ---------------------------------------------------------------


def test_a_missing_signature_file_is_refused_with_how_to_sign(tmp_path: Path) -> None:
    path = _archive(tmp_path)

    message = _refusal(path)

    assert "no signature civil-79.avro.sig" in message and "popsync archive sign" in message


def test_a_signature_path_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    path = _archive(tmp_path)
    signature_path(path).mkdir()

    assert "cannot read it" in _refusal(path)


def _edited(**fields: Any) -> Callable[[dict[str, Any]], bytes]:
    def edit(form: dict[str, Any]) -> bytes:
        form.update(fields)
        return json.dumps(form).encode()

    return edit


def _without(name: str) -> Callable[[dict[str, Any]], bytes]:
    def edit(form: dict[str, Any]) -> bytes:
        del form[name]
        return json.dumps(form).encode()

    return edit


NOT_A_SIGNATURE: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "not-json": lambda _form: b"{]",
    "empty": lambda _form: b"",
    "not-utf8": lambda _form: b'{"publisher": "\xff"}',
    "a-list": lambda _form: b'["civil-status-79"]',
    "a-string": lambda _form: b'"signature"',
    "null": lambda _form: b"null",
    "no-publisher": _without("publisher"),
    "no-key-id": _without("key_id"),
    "no-sha256": _without("sha256"),
    "no-size": _without("size"),
    "no-signature": _without("signature"),
    "sha256-not-hex": _edited(sha256="zz" * 32),
    "sha256-a-number": _edited(sha256=12),
    "size-not-a-number": _edited(size="three thousand"),
    "size-null": _edited(size=None),
    "size-nan": lambda form: json.dumps(form).replace(str(form["size"]), "NaN").encode(),
    "signature-not-base64": _edited(signature="not base64!"),
    "signature-base64-with-junk": _edited(signature="AAAA\n====+"),
    "signature-null": _edited(signature=None),
}


@pytest.mark.parametrize("spoil", NOT_A_SIGNATURE.values(), ids=NOT_A_SIGNATURE.keys())
def test_a_signature_file_that_is_not_one_is_refused(
    tmp_path: Path, spoil: Callable[[dict[str, Any]], bytes]
) -> None:
    path = _signed(tmp_path)
    signature_path(path).write_bytes(spoil(_claim(path)))

    message = _refusal(path)

    assert f"{path}.sig: not an archive signature" in message


def test_a_signature_of_the_wrong_length_does_not_verify(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    form = _claim(path)
    form["signature"] = base64.b64encode(b"\x00" * 10).decode()
    _write_claim(path, form)

    assert "does not verify" in _refusal(path)


def test_a_signature_file_with_an_infinite_size_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    form = _claim(path)
    text = json.dumps(form).replace(f'"size": {form["size"]}', '"size": Infinity')
    signature_path(path).write_text(text, encoding="utf-8")

    assert "not an archive signature" in _refusal(path)


def test_a_deeply_nested_signature_file_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    signature_path(path).write_bytes(b"[" * 60_000)

    assert "not an archive signature" in _refusal(path)


def test_a_huge_signature_file_is_refused(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    form = {**_claim(path), "comment": "x" * (1 << 20)}
    signature_path(path).write_text(json.dumps(form), encoding="utf-8")

    assert "not an archive signature" in _refusal(path)


def test_a_huge_signature_file_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    path = _signed(tmp_path)
    with signature_path(path).open("wb") as handle:
        handle.truncate(16 << 20)  # sparse: 16 MiB of zeros, no disk used

    tracemalloc.start()
    try:
        _refusal(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 1 << 20


# --- each record's authority ----------------------------------------------------------------


def _identity(publisher: Publisher, signer: Signer) -> SigningIdentity:
    key, _ = _entry(signer, publisher)
    return SigningIdentity(publisher, key)


def _record(name: str, event: m.RegistryEvent, position: int = 0) -> InboundMessage:
    key = event.subject_pin.encode() if event.subject_pin else None
    return InboundMessage(archive_topic(0, name), 0, position, key, EVENTS.encode(event))


ARCHIVES = ArchiveVerifier(
    {
        archive_topic(0, "civil-79.avro"): _identity(CIVIL_79, CIVIL_KEY),
        archive_topic(0, "residence-79.avro"): _identity(RESIDENCE_79, RESIDENCE_KEY),
    }
)


def test_a_record_within_its_signers_authority_is_that_signers() -> None:
    event = birth_event()

    identity = ARCHIVES.verify(_record("civil-79.avro", event), event, NOW)

    assert identity.publisher is CIVIL_79 and identity.key.key_id == CIVIL_KEY.key_id


def test_the_record_topic_names_its_archive() -> None:
    assert archive_topic(3, "civil-79.avro") == "archive:3:civil-79.avro"


@pytest.mark.parametrize(
    ("archive", "event", "reason"),
    [
        ("residence-79.avro", birth_event(), "SOURCE_NOT_SIGNER"),
        (
            "civil-79.avro",
            birth_event(
                event_type=m.EventType.MARRIAGE_REGISTERED,
                payload=m.MarriageRegistered(
                    spouse_full_name="Lê Văn Cường",
                    marriage_date=datetime(2020, 5, 1, tzinfo=UTC).date(),
                    registration_number="KH-1",
                ),
            ),
            "EVENT_TYPE_NOT_PERMITTED",
        ),
        ("civil-79.avro", birth_event(source_province="01"), "PROVINCE_OUT_OF_SCOPE"),
        ("civil-79.avro", birth_event(source_province="99"), "PROVINCE_OUT_OF_SCOPE"),
    ],
    ids=["another-registry", "type-not-permitted", "another-province", "unknown-province"],
)
def test_a_record_beyond_its_signers_authority_has_the_streams_reason(
    archive: str, event: m.RegistryEvent, reason: str
) -> None:
    with pytest.raises(TrustViolation) as caught:
        ARCHIVES.verify(_record(archive, event), event, NOW)

    assert caught.value.reason == reason
    assert PIN not in str(caught.value) and "Nguyễn" not in str(caught.value)


def test_what_a_record_declares_does_not_choose_its_publisher() -> None:
    """A residence archive's birth record declares CIVIL_STATUS: it is still the residence
    registry's record, and refused as such."""
    event = birth_event(source_registry=m.SourceRegistry.CIVIL_STATUS)

    with pytest.raises(TrustViolation) as caught:
        ARCHIVES.verify(_record("residence-79.avro", event), event, NOW)

    assert caught.value.reason == "SOURCE_NOT_SIGNER"
    assert "residence-79" in str(caught.value)


@pytest.mark.parametrize("topic", ["archive:unknown.avro", "registry-events", "civil-79.avro"])
def test_a_record_of_no_verified_archive_is_unsigned(topic: str) -> None:
    event = birth_event()
    message = InboundMessage(topic, 0, 0, PIN.encode(), EVENTS.encode(event))

    with pytest.raises(TrustViolation) as caught:
        ARCHIVES.verify(message, event, NOW)

    assert caught.value.reason == "UNSIGNED"


def test_refreshing_an_archive_verifier_changes_nothing() -> None:
    event = birth_event()
    asyncio.run(ARCHIVES.refresh(force=True))

    assert ARCHIVES.verify(_record("civil-79.avro", event), event, NOW).publisher is CIVIL_79
