"""Provisioning: the topics (from `popsync.topology`) and the PostgreSQL schema.

Both are idempotent: `popsync topics create`, `popsync db migrate`, and every worker
at start (the schema only) may run them again at any time. Both fail fast, in one
line, when the broker or PostgreSQL cannot be reached (`BrokerUnreachable`,
`DatabaseUnreachable`).
"""

from __future__ import annotations

from popsync.adapters.kafka.admin import provision_topics, require_broker
from popsync.adapters.postgres.database import connect, schema_sql
from popsync.settings import Settings
from popsync.topology import topic_specs


def migrate(settings: Settings) -> None:
    """Apply the idempotent schema (synchronously, before workers start)."""
    with connect(settings.postgres) as conn:
        conn.execute(schema_sql().encode())


def provision(settings: Settings) -> None:
    """Create every topic of the topology that does not exist yet."""
    connection = settings.kafka.librdkafka()
    require_broker(connection)  # seconds, where provisioning would retry for its timeout
    provision_topics(connection, topic_specs(settings))
