"""All configuration, in one place: environment variables `POPSYNC_*`, `__` for nesting.

Example: `POPSYNC_KAFKA__BOOTSTRAP_SERVERS=kafka:9092`,
`POPSYNC_POSTGRES__DSN=postgresql://popsync:***@db/popsync`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from popsync.identity.matching import MatchThresholds

WorkerName = Literal["validator", "synchronizer", "store-writer"]
WORKER_NAMES: tuple[WorkerName, ...] = ("validator", "synchronizer", "store-writer")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Broker list, host:port,...")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How workers reach the broker; SASL_SSL in production"
    )
    sasl_mechanism: str | None = Field(None, description="e.g. SCRAM-SHA-512, with SASL_*")
    sasl_username: str | None = Field(None, description="The worker's SASL principal")
    sasl_password: SecretStr | None = Field(None, description="Its password (a secret)")
    session_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        description="Consumer group session timeout; a new member's join waits about half "
        "of it on some brokers, so keep it short where workers restart often.",
    )
    client_id: str = Field("popsync", description="Prefix of the Kafka client ids")
    max_poll_records: int = Field(
        2_000,
        ge=1,
        description="Most fetched messages a worker's consumer turns into Python objects "
        "at once; the rest of a fetch waits as raw bytes. Bounds memory even against a "
        "broker that answers a fetch with more than the partition fetch size",
    )
    fetch_max_wait_ms: int = Field(
        500,
        ge=0,
        le=30_000,
        description="Longest time the broker may hold a worker's fetch while it has no "
        "new messages (Kafka's fetch.max.wait.ms; Apache Kafka answers as soon as one "
        "arrives)",
    )

    linger_ms: int = Field(
        20,
        ge=0,
        le=1_000,
        description="Longest time a producer holds a message to send it in a larger batch "
        "(librdkafka's linger.ms). Worker outputs are flushed per batch, so this delays only "
        "a publisher's events; it trades that delay for far fewer produce batches, which the "
        "broker's CPU pays for per partition batch",
    )

    def librdkafka(self) -> dict[str, str | int]:
        """The connection part of a confluent-kafka (librdkafka) configuration."""
        config: dict[str, str | int] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class TopicSettings(_Section):
    registry_events: str = Field("popsync.registry-events.v1", description="Input from registries")
    validated_events: str = "popsync.validated-events.v1"
    dead_letters: str = "popsync.dead-letters.v1"
    citizen_updates: str = "popsync.citizen-updates.v1"
    conflicts: str = "popsync.conflicts.v1"
    identity_assigned: str = Field(
        "popsync.identity-assigned.v1", description="PINs allocated to births, for registries"
    )
    match_reviews: str = Field(
        "popsync.match-reviews.v1", description="Sector records awaiting an operator's decision"
    )
    unmatched_records: str = Field(
        "popsync.unmatched-records.v1", description="Sector records no citizen matches"
    )
    partitions: int = Field(6, ge=1, description="Partitions of every popsync topic")
    replication_factor: int = Field(1, ge=1, description="3 in production")


class GroupSettings(_Section):
    validator: str = "popsync-validator"
    synchronizer: str = "popsync-synchronizer"
    store_writer: str = "popsync-store-writer"

    def for_worker(self, worker: WorkerName) -> str:
        return {
            "validator": self.validator,
            "synchronizer": self.synchronizer,
            "store-writer": self.store_writer,
        }[worker]


class PostgresSettings(_Section):
    dsn: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/popsync"),
        description="libpq connection URI of the central store (a secret: it may hold "
        "the password)",
    )
    connect_timeout_seconds: float = Field(
        5.0, description="Longest wait for a new PostgreSQL connection"
    )


class ProcessingSettings(_Section):
    batch_size: int = Field(500, ge=1, description="Most events one worker step takes at once")
    batch_window_seconds: float = Field(
        0.02,
        gt=0,
        description="Longest wait, after a fetch brought fewer than batch_size events, for "
        "more to fill the batch: latency at low rates, while under load fetches fill it",
    )
    retry_initial_seconds: float = Field(0.5, gt=0, description="First backoff on a fault")
    retry_max_seconds: float = Field(30.0, gt=0, description="Longest backoff on a fault")
    future_skew_seconds: int = Field(300, ge=0, description="Clock skew tolerated for 'future'")
    state_cache_citizens: int = Field(
        20_000,
        ge=0,
        description="Citizens whose state the synchronizer keeps in memory (LRU, about 3 KB "
        "each: the snapshot and the events' stored bytes); checked against the stored "
        "version on every use, so it is never stale",
    )
    gc_first_threshold: int = Field(
        500_000,
        ge=0,
        description="Allocations between two collections of Python's youngest generation "
        "(gc.set_threshold; Python's default 700, 0 turns the cyclic collector off). "
        "Workers allocate many short-lived objects per event, almost none in cycles",
    )
    citizen_events_per_day: int = Field(
        1_000,
        ge=1,
        description="Most events one citizen may have applied per day (UTC, by arrival); "
        "the synchronizer parks the excess as CITIZEN_DAILY_LIMIT, replayable the next "
        "day. A real citizen has a handful a year: a flood is a faulty or hostile source",
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, how long the in-flight batch may take to become durable "
        "before the worker exits without committing it (keep below the pod's "
        "terminationGracePeriodSeconds)",
    )


class DeadLetterLimitSettings(_Section):
    """How much bad input one publishing source may send before it is quarantined, and
    when dead-lettering looks like a bad deploy rather than bad input (stop loudly)."""

    window: int = Field(
        1000, ge=1, description="Recent messages of one source the ratio is taken over"
    )
    max_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Quarantine a source when more than this share of its full window is parked",
    )
    max_consecutive: int = Field(
        200, ge=1, description="Quarantine a source after this many of its messages parked in a row"
    )
    bad_deploy_sources: int = Field(
        5,
        ge=1,
        description="Stop the worker instead when this many sources cross the limit for the "
        "same reason within one window of the worker's messages: the same failure across "
        "many sources is the signature of a bad deployment, not of bad input",
    )
    quarantine_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often a worker re-reads which sources are quarantined (PostgreSQL), "
        "so a release, or a quarantine decided by another instance, takes effect",
    )


class ObservabilitySettings(_Section):
    """The HTTP endpoint of every worker: /metrics, /healthz, /readyz."""

    bind_host: str = Field("0.0.0.0", description="Interface of the endpoint")  # noqa: S104
    port: int = Field(9400, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz")
    ready_max_lag: int = Field(
        10_000, ge=0, description="/readyz fails while the consumer lag exceeds this"
    )


class Settings(BaseSettings):
    """popsync settings; immutable once read."""

    model_config = SettingsConfigDict(
        env_prefix="POPSYNC_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    groups: GroupSettings = GroupSettings()
    postgres: PostgresSettings = PostgresSettings()
    processing: ProcessingSettings = ProcessingSettings()
    dead_letter_limit: DeadLetterLimitSettings = DeadLetterLimitSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    # Thresholds of sector-record matching, in bits: POPSYNC_MATCHING__AUTO_LINK, __REVIEW,
    # __MARGIN (popsync.identity.MatchThresholds).
    matching: MatchThresholds = MatchThresholds()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the workers' logs"
    )
