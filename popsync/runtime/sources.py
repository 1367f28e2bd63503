"""Who published a message: the unit the dead-letter limit and the quarantine judge.

A source is a publisher of the directory, known only from a verified signature
(`popsync.trust`): the validator judges each event by the publisher whose signature it
verified, and tells the next stages (the verified-publisher header it sets on a validated
event). An event whose signature does not verify counts as `unverified`, whatever it
claims, so no one can get a registry quarantined by sending bad events in its name; a
message that does not even decode counts as `unidentified`. The number of sources is the
number of publishers, plus these two, whatever an attacker sends.
"""

from __future__ import annotations

from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.runtime.messages import InboundMessage
from popsync.trust.signing import VERIFIED_PUBLISHER_HEADER, header

UNIDENTIFIED = "unidentified"
UNVERIFIED = "unverified"  # decoded, but not signed by a publisher allowed to send it
_EVENT_CODEC = Codec(m.RegistryEvent)


def source_of_message(message: InboundMessage) -> str:
    """The source of one message, without verifying it again (for a message a bug parked):
    the publisher the validator verified, when it is a validated event; else `unverified`
    or `unidentified` — the signature of a registry's message is not checked here, so its
    claims count for nothing."""
    verified = header(message.headers, VERIFIED_PUBLISHER_HEADER)
    if verified is not None:
        return verified.decode(errors="replace")
    try:
        _EVENT_CODEC.decode(message.value)
    except DecodeError:
        return UNIDENTIFIED
    return UNVERIFIED
