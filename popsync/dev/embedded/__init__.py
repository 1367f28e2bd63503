"""Real services without Docker, for the demo and the integration tests.

A Kafka-protocol broker (Tansu) and a PostgreSQL server run as local subprocesses from
pip-installed wheels; production points the same code at Apache Kafka and PostgreSQL.
"""

from popsync.dev.embedded._service import pid_state
from popsync.dev.embedded.broker import EmbeddedBroker
from popsync.dev.embedded.postgres import EmbeddedPostgres

__all__ = ["EmbeddedBroker", "EmbeddedPostgres", "pid_state"]
