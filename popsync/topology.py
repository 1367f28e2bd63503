"""The topics popsync owns, with their partitioning and retention, from settings."""

from __future__ import annotations

from popsync.adapters.kafka.admin import TopicSpec
from popsync.settings import Settings

DAY_MS = 24 * 3600 * 1000
# Largest event a registry may publish. A dead letter carries the original key and
# value plus about 1 KB of facts, so its topic takes twice that and some: parking an
# event can never fail for its size (which would stall the partition).
MAX_EVENT_BYTES = 1024 * 1024
MAX_DEAD_LETTER_BYTES = 2 * MAX_EVENT_BYTES + 64 * 1024


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic; one partition count for all, so a PIN keeps one partition number."""
    t = settings.topics

    def spec(name: str, **config: str) -> TopicSpec:
        return TopicSpec(name, t.partitions, t.replication_factor, config)

    return [
        spec(
            t.registry_events,
            **{"retention.ms": str(30 * DAY_MS), "max.message.bytes": str(MAX_EVENT_BYTES)},
        ),
        spec(
            t.validated_events,
            **{"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(MAX_EVENT_BYTES)},
        ),
        # Dead letters are kept long enough for a fix and a replay.
        spec(
            t.dead_letters,
            **{"retention.ms": str(90 * DAY_MS), "max.message.bytes": str(MAX_DEAD_LETTER_BYTES)},
        ),
        # Compacted: the latest snapshot per PIN stays forever; the lag keeps every
        # version readable for a week so the store writer's history has no gaps.
        spec(
            t.citizen_updates,
            **{"cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * DAY_MS)},
        ),
        spec(t.conflicts, **{"retention.ms": str(90 * DAY_MS)}),
        # Registries read their allocated PINs from here; kept as long as the input.
        spec(t.identity_assigned, **{"retention.ms": str(30 * DAY_MS)}),
        # Reviews stay in PostgreSQL (`match_reviews`) until resolved; the topic notifies.
        spec(t.match_reviews, **{"retention.ms": str(90 * DAY_MS)}),
        # Sector databases read the records to correct from here.
        spec(t.unmatched_records, **{"retention.ms": str(90 * DAY_MS)}),
    ]
