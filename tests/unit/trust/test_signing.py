"""Signed events: what the signature covers, key files, and the check against the directory."""

from __future__ import annotations

import asyncio
import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from popsync.contract import models as m
from popsync.contract.codec import Codec
from popsync.runtime.messages import InboundMessage
from popsync.trust.identity import Publisher, PublisherKey
from popsync.trust.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    Signer,
    SigningKeyError,
    load_signer,
    signed_bytes,
)
from popsync.trust.verification import TrustViolation, Verifier
from tests.builders import PIN, birth_event

EVENTS = Codec(m.RegistryEvent)
NOW = datetime(2026, 12, 6, tzinfo=UTC)
CIVIL_79 = Publisher(
    "civil-status-79",
    m.SourceRegistry.CIVIL_STATUS,
    frozenset({"79"}),
    frozenset({m.EventType.BIRTH_REGISTERED, m.EventType.DEATH_REGISTERED}),
)


class Directory:
    def __init__(self, *entries: tuple[PublisherKey, Publisher]) -> None:
        self.entries = {key.key_id: (key, publisher) for key, publisher in entries}

    async def keys(self) -> dict[str, tuple[PublisherKey, Publisher]]:
        return dict(self.entries)


def registered(
    signer: Signer, publisher: Publisher = CIVIL_79, **window: datetime | None
) -> tuple[PublisherKey, Publisher]:
    key = PublisherKey(
        signer.key_id,
        publisher.publisher_id,
        signer.public_key,
        valid_from=window.get("valid_from") or datetime(2000, 1, 1, tzinfo=UTC),
        valid_until=window.get("valid_until"),
        revoked_at=window.get("revoked_at"),
    )
    return key, publisher


def signed_message(
    signer: Signer, event: m.RegistryEvent, key: bytes = PIN.encode()
) -> InboundMessage:
    value = EVENTS.encode(event)
    return InboundMessage("in", 0, 0, key, value, tuple(signer.headers(key, value, event)))


def verifier(*entries: tuple[PublisherKey, Publisher]) -> Verifier:
    check = Verifier(Directory(*entries), refresh_seconds=60)
    asyncio.run(check.refresh())
    return check


SIGNER = Signer.generate("civil-status-79", "civil-status-79-k1")


def test_a_signed_event_of_a_known_publisher_verifies_to_its_identity() -> None:
    identity = verifier(registered(SIGNER)).verify(
        signed_message(SIGNER, birth_event()), birth_event(), NOW
    )
    assert (identity.publisher.publisher_id, identity.key.key_id) == (
        "civil-status-79",
        "civil-status-79-k1",
    )


def reason(check: Verifier, message: InboundMessage, event: m.RegistryEvent) -> str:
    with pytest.raises(TrustViolation) as refused:
        check.verify(message, event, NOW)
    return refused.value.reason


def test_each_failure_has_its_own_reason() -> None:
    event = birth_event()
    good = signed_message(SIGNER, event)
    check = verifier(registered(SIGNER))
    assert reason(check, replace(good, headers=()), event) == "UNSIGNED"
    stranger = Signer.generate("civil-status-79", "not-registered")
    assert reason(check, signed_message(stranger, event), event) == "SIGNER_UNKNOWN"
    impostor = Signer("civil-status-79", SIGNER.key_id, b"\x01" * 32)  # same id, other key
    assert reason(check, signed_message(impostor, event), event) == "SIGNATURE_INVALID"
    revoked = verifier(registered(SIGNER, revoked_at=NOW - timedelta(seconds=1)))
    assert reason(revoked, good, event) == "KEY_REVOKED"
    gone = replace(CIVIL_79, revoked_at=NOW - timedelta(days=1))
    assert reason(verifier(registered(SIGNER, gone)), good, event) == "KEY_REVOKED"
    expired = verifier(registered(SIGNER, valid_until=NOW - timedelta(hours=2)))
    assert reason(expired, good, event) == "KEY_EXPIRED"
    future = verifier(registered(SIGNER, valid_from=NOW + timedelta(days=1)))
    assert reason(future, good, event) == "KEY_EXPIRED"


def test_authority_comes_from_the_signer_not_from_the_event() -> None:
    residence = Publisher(
        "residence-79",
        m.SourceRegistry.RESIDENCE,
        frozenset({"79"}),
        frozenset({m.EventType.PERMANENT_RESIDENCE_REGISTERED}),
    )
    signer = Signer.generate("residence-79", "residence-79-k1")
    check = verifier(registered(SIGNER), registered(signer, residence))
    death = birth_event()  # declares CIVIL_STATUS: a residence registry's key signs it
    assert reason(check, signed_message(signer, death), death) == "SOURCE_NOT_SIGNER"
    marriage = birth_event(event_type=m.EventType.MARRIAGE_REGISTERED)
    assert reason(check, signed_message(SIGNER, marriage), marriage) == "EVENT_TYPE_NOT_PERMITTED"
    elsewhere = birth_event(source_province="01")
    assert reason(check, signed_message(SIGNER, elsewhere), elsewhere) == "PROVINCE_OUT_OF_SCOPE"


def test_any_change_to_the_message_breaks_the_signature() -> None:
    event = birth_event()
    good = signed_message(SIGNER, event)
    check = verifier(registered(SIGNER))
    rekeyed = replace(good, key=b"079203000124")
    assert reason(check, rekeyed, event) == "SIGNATURE_INVALID"
    value = bytearray(good.value or b"")
    value[-1] ^= 1
    assert reason(check, replace(good, value=bytes(value)), event) == "SIGNATURE_INVALID"
    # the same bytes claimed for another publisher id change the signed string
    assert signed_bytes(good.key, good.value or b"", event, "residence-79") != signed_bytes(
        good.key, good.value or b"", event, "civil-status-79"
    )


def test_a_rotated_out_key_still_verifies_in_flight_events_for_a_grace_period() -> None:
    event = birth_event()  # recorded in 2003: a backfill; the key's window is what counts
    old = registered(SIGNER, valid_until=NOW - timedelta(minutes=30))  # grace: one hour
    assert verifier(old).verify(signed_message(SIGNER, event), event, NOW)


def test_a_key_file_round_trips_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    SIGNER.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_signer(path)
    assert (loaded.publisher_id, loaded.key_id, loaded.public_key) == (
        SIGNER.publisher_id,
        SIGNER.key_id,
        SIGNER.public_key,
    )
    with pytest.raises(FileExistsError):
        SIGNER.save(path)
    bad = tmp_path / "bad.key"
    bad.write_text(json.dumps({"publisher": "x"}))
    with pytest.raises(SigningKeyError, match="is not a popsync signing key"):
        load_signer(bad)
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_signer(tmp_path / "missing.key")


def test_the_signature_and_key_id_travel_as_headers() -> None:
    headers = dict(signed_message(SIGNER, birth_event()).headers)
    assert len(headers[SIGNATURE_HEADER] or b"") == 64
    assert headers[KEY_ID_HEADER] == b"civil-status-79-k1"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (((SIGNATURE_HEADER, b"x"), (KEY_ID_HEADER, SIGNER.key_id.encode())), "SIGNATURE_INVALID"),
        (
            ((SIGNATURE_HEADER, b"\0" * 10_000), (KEY_ID_HEADER, SIGNER.key_id.encode())),
            "SIGNATURE_INVALID",
        ),
        (((SIGNATURE_HEADER, b"\0" * 64), (KEY_ID_HEADER, b"\xff" * 1_000_000)), "SIGNER_UNKNOWN"),
        (((SIGNATURE_HEADER, None), (KEY_ID_HEADER, SIGNER.key_id.encode())), "UNSIGNED"),
        (((KEY_ID_HEADER, b""), (SIGNATURE_HEADER, b"")), "SIGNER_UNKNOWN"),
    ],
)
def test_hostile_headers_end_as_a_reason_never_an_exception(
    headers: tuple[tuple[str, bytes | None], ...], expected: str
) -> None:
    event = birth_event()
    message = replace(signed_message(SIGNER, event), headers=headers)
    assert reason(verifier(registered(SIGNER)), message, event) == expected
