"""Which registry is the authority for which event types and citizen fields.

One table for the concept: the validator rejects an event from a registry that
is not authoritative for its type, and the merge only lets an event set the
fields its registry owns.
"""

from __future__ import annotations

from collections.abc import Mapping

from popsync.contract.models import EventType, SourceRegistry

EVENT_AUTHORITY: Mapping[EventType, SourceRegistry] = {
    EventType.BIRTH_REGISTERED: SourceRegistry.CIVIL_STATUS,
    EventType.DEATH_REGISTERED: SourceRegistry.CIVIL_STATUS,
    EventType.MARRIAGE_REGISTERED: SourceRegistry.CIVIL_STATUS,
    EventType.DIVORCE_RECORDED: SourceRegistry.CIVIL_STATUS,
    EventType.CIVIL_STATUS_CHANGED: SourceRegistry.CIVIL_STATUS,
    EventType.PERMANENT_RESIDENCE_REGISTERED: SourceRegistry.RESIDENCE,
    EventType.TEMPORARY_RESIDENCE_REGISTERED: SourceRegistry.RESIDENCE,
    EventType.RESIDENCE_DEREGISTERED: SourceRegistry.RESIDENCE,
    EventType.ID_CARD_ISSUED: SourceRegistry.ID_CARD,
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


def authority_for(event_type: EventType) -> SourceRegistry | None:
    """The registry allowed to publish `event_type`; None for an unknown type."""
    return EVENT_AUTHORITY.get(event_type)
