"""The JSON form of a registry event, for `popsync publish FILE.jsonl` and the simulator.

One JSON object per line: the envelope's fields, with `payload` a plain object
whose record type follows from `event_type`; dates ISO-8601, timestamps
ISO-8601 with an offset.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from popsync.contract import models as m
from popsync.contract.codec import (
    PAYLOAD_MODELS,
    DecodeError,
    describe_validation_error,
    payload_record_for,
)


def event_to_json(event: m.RegistryEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")


def event_from_json(obj: Any) -> m.RegistryEvent:
    """Validate one JSON object against the contract; DecodeError says what is wrong."""
    if not isinstance(obj, dict):
        raise DecodeError("CONTRACT_VIOLATION", "line is not a JSON object")
    fields = dict(obj)
    event_type = fields.get("event_type")
    payload_model = PAYLOAD_MODELS.get(payload_record_for(str(event_type)))
    if payload_model is None:
        raise DecodeError("EVENT_TYPE_UNKNOWN", f"event_type {event_type!r} is not in the contract")
    try:
        fields["payload"] = payload_model.model_validate(fields.get("payload"))
        return m.RegistryEvent.model_validate(fields)
    except ValidationError as exc:
        raise DecodeError("CONTRACT_VIOLATION", describe_validation_error(exc)) from exc
