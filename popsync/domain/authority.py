"""Which registries are the authority for which event types and citizen fields.

One table for the concept: the validator rejects an event from a registry that
is not authoritative for its type, and the merge only lets an event set the
fields its registry owns. Most event types have one authority; a sector record
comes from either sector database (social insurance, civil servants), which own
no citizen field.
"""

from __future__ import annotations

from collections.abc import Mapping

from popsync.contract.models import EventType, SourceRegistry

_CIVIL_STATUS = frozenset({SourceRegistry.CIVIL_STATUS})
_RESIDENCE = frozenset({SourceRegistry.RESIDENCE})
_SECTORS = frozenset({SourceRegistry.SOCIAL_INSURANCE, SourceRegistry.CIVIL_SERVANT})

EVENT_AUTHORITY: Mapping[EventType, frozenset[SourceRegistry]] = {
    EventType.BIRTH_REGISTERED: _CIVIL_STATUS,
    EventType.DEATH_REGISTERED: _CIVIL_STATUS,
    EventType.DEATH_ANNULLED: _CIVIL_STATUS,
    EventType.MARRIAGE_REGISTERED: _CIVIL_STATUS,
    EventType.DIVORCE_RECORDED: _CIVIL_STATUS,
    EventType.CIVIL_STATUS_CHANGED: _CIVIL_STATUS,
    EventType.PERMANENT_RESIDENCE_REGISTERED: _RESIDENCE,
    EventType.TEMPORARY_RESIDENCE_REGISTERED: _RESIDENCE,
    EventType.RESIDENCE_DEREGISTERED: _RESIDENCE,
    EventType.ID_CARD_ISSUED: frozenset({SourceRegistry.ID_CARD}),
    EventType.SECTOR_RECORD_REGISTERED: _SECTORS,
}

FIELD_AUTHORITY: Mapping[str, SourceRegistry] = {
    **dict.fromkeys(
        (
            "full_name",
            "birth_date",
            "sex",
            "ethnicity",
            "nationality",
            "birthplace_province",
            "marital_status",
            "spouse_pin",
            "life_status",
            "death_date",
        ),
        SourceRegistry.CIVIL_STATUS,
    ),
    "permanent_residence": SourceRegistry.RESIDENCE,
    "temporary_residence": SourceRegistry.RESIDENCE,
    "id_card": SourceRegistry.ID_CARD,
}


def authorities_for(event_type: EventType) -> frozenset[SourceRegistry]:
    """The registries allowed to publish `event_type`; empty for an unknown type."""
    return EVENT_AUTHORITY.get(event_type, frozenset())


def may_publish(source: SourceRegistry, event_type: EventType) -> bool:
    """Whether `source` is an authority for `event_type`."""
    return source in authorities_for(event_type)
