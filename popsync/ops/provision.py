"""Provisioning: the topics (from `popsync.topology`) and the PostgreSQL schema.

Both are idempotent: `popsync topics create`, `popsync db migrate`, and every worker
at start (the schema only) may run them again at any time.
"""

from __future__ import annotations

import psycopg

from popsync.adapters.kafka.admin import provision_topics
from popsync.adapters.postgres.database import schema_sql
from popsync.settings import Settings
from popsync.topology import topic_specs


def migrate(settings: Settings) -> None:
    """Apply the idempotent schema (synchronously, before workers start)."""
    with psycopg.connect(settings.postgres.dsn.get_secret_value()) as conn:
        conn.execute(schema_sql().encode())


def provision(settings: Settings) -> None:
    """Create every topic of the topology that does not exist yet."""
    provision_topics(settings.kafka.librdkafka(), topic_specs(settings))
