"""The topics popsync owns, with their partitioning and retention, from settings."""

from __future__ import annotations

from popsync.adapters.kafka_admin import TopicSpec
from popsync.settings import Settings

DAY_MS = 24 * 3600 * 1000


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic; one partition count for all, so a PIN keeps one partition number."""
    t = settings.topics

    def spec(name: str, **config: str) -> TopicSpec:
        return TopicSpec(name, t.partitions, t.replication_factor, config)

    return [
        spec(t.registry_events, **{"retention.ms": str(30 * DAY_MS)}),
        spec(t.validated_events, **{"retention.ms": str(7 * DAY_MS)}),
        # Dead letters are kept long enough for a fix and a replay.
        spec(t.dead_letters, **{"retention.ms": str(90 * DAY_MS)}),
        # Compacted: the latest snapshot per PIN stays forever; the lag keeps every
        # version readable for a week so the store writer's history has no gaps.
        spec(
            t.citizen_updates,
            **{"cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * DAY_MS)},
        ),
        spec(t.conflicts, **{"retention.ms": str(90 * DAY_MS)}),
    ]
