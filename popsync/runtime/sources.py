"""Who published a message: the unit the dead-letter limit and the quarantine judge.

A source is a registry family in one province, `CIVIL_STATUS/79`: the publisher whose bad
input must stay its own problem. Until events carry a verified signature it is read from
the event itself (`source_registry`, `source_province`), so a registry that lies about
itself is judged as the source it claims to be; a message that does not decode names no
source and is judged as `unidentified`.

The key space is bounded whatever an attacker sends (a few hundred keys at most): an
unknown province code counts as `?`, so made-up codes cannot grow the limit's memory.
"""

from __future__ import annotations

from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.domain.provinces import UnknownProvinceCode, resolve_province
from popsync.runtime.messages import InboundMessage

UNIDENTIFIED = "unidentified"
_EVENT_CODEC = Codec(m.RegistryEvent)


def source_of_event(event: m.RegistryEvent) -> str:
    """The source that published `event`, e.g. `CIVIL_STATUS/79` (province as sent,
    a pre-2025 code stays its own source: it is a distinct local registry)."""
    try:
        resolution = resolve_province(event.source_province)
    except UnknownProvinceCode:
        return f"{event.source_registry.value}/?"
    given = resolution.given_code
    province = given[1:] if len(given) == 3 else given
    return f"{event.source_registry.value}/{province}"


def source_of_message(message: InboundMessage) -> str:
    """The source of a registry event's message, decoding it (for one message: a worker
    that decodes its batch anyway takes the source from the events it decoded)."""
    try:
        event = _EVENT_CODEC.decode(message.value)
    except DecodeError:
        return UNIDENTIFIED
    return source_of_event(event)
