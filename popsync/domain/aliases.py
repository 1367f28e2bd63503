"""Aliases: the legacy identifiers a citizen is also known by, and resolving them.

A citizen may carry a 9-digit CMND (the identity-card number before PINs) or an
old PIN that a correction replaced. Events that declare such an identifier
(`IdCardIssued.previous_id_number`, a `CORRECTION` with `previous_pin`) register
it as an alias of the subject; an event that names its subject by an alias (its
`subject_legacy_id`, or a `subject_pin` that is a replaced PIN) is resolved to
the current PIN before the rules and the merge see it. An alias names exactly one
citizen: declaring it for a second one is refused (`ALIAS_TAKEN`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from popsync.contract import models as m

AliasKind = Literal["CMND", "PREVIOUS_PIN"]
_LEGACY_ID = re.compile(r"[0-9]{9}|[0-9]{12}")  # ASCII digits only


@dataclass(frozen=True)
class Alias:
    alias: str
    pin: str
    kind: AliasKind
    event_id: str


class AliasDirectory(Protocol):
    async def resolve(self, identifiers: Sequence[str]) -> Mapping[str, str]:
        """The current PIN of each identifier that is a known alias."""
        ...

    async def register(self, aliases: Sequence[Alias]) -> Mapping[str, str]:
        """Store new aliases; every alias's PIN as stored (another PIN if it was taken)."""
        ...


def is_legacy_id(text: str) -> bool:
    return _LEGACY_ID.fullmatch(text) is not None


def subject_reference(event: m.RegistryEvent) -> str | None:
    """How the registry named the subject: its PIN, else its legacy identifier."""
    return event.subject_pin or event.subject_legacy_id


def declared_aliases(event: m.RegistryEvent) -> list[Alias]:
    """Aliases a validated event declares for its subject."""
    pin, payload = event.subject_pin, event.payload
    if pin is None:
        return []
    found: list[Alias] = []
    if isinstance(payload, m.IdCardIssued) and payload.previous_id_number:
        found.append(Alias(payload.previous_id_number, pin, "CMND", event.event_id))
    if isinstance(payload, m.CivilStatusChanged) and payload.previous_pin:
        found.append(Alias(payload.previous_pin, pin, "PREVIOUS_PIN", event.event_id))
    return [a for a in found if a.alias != pin]
