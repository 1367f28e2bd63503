"""All configuration, in one place: environment variables `POPSYNC_*`, `__` for nesting.

Example: `POPSYNC_KAFKA__BOOTSTRAP_SERVERS=kafka:9092`,
`POPSYNC_POSTGRES__DSN=postgresql://popsync:***@db/popsync`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError
from pydantic_settings.sources.utils import parse_env_vars

from popsync.identity.matching import MatchThresholds

WorkerName = Literal["validator", "synchronizer"]
WORKER_NAMES: tuple[WorkerName, ...] = ("validator", "synchronizer")


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

    def for_worker(self, worker: WorkerName) -> str:
        return {
            "validator": self.validator,
            "synchronizer": self.synchronizer,
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
        "Workers and the verification service allocate many short-lived objects per event "
        "or request, almost none in cycles",
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
        "so a quarantine decided by another instance takes effect; a release takes effect at "
        "once (the validator reads again before it holds anything)",
    )


class TrustSettings(_Section):
    """How the validator checks who published an event (popsync.trust)."""

    directory_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the validator re-reads the publisher directory, so a "
        "revocation takes effect (a key it does not know makes it read the directory at once)",
    )
    expiry_grace_seconds: float = Field(
        3600.0,
        ge=0,
        description="How long after a key's valid_until it still verifies: events signed "
        "just before a rotation's old key ended may still be in flight",
    )


class ObservabilitySettings(_Section):
    """The HTTP endpoint of every worker: /metrics, /healthz, /readyz."""

    bind_host: str = Field(
        "127.0.0.1",
        description="Interface of the endpoint: loopback by default (CLI, demo); the pod IP "
        "in Kubernetes (behind a NetworkPolicy), 0.0.0.0 on docker-compose's private network",
    )
    port: int = Field(9400, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz")
    ready_max_lag: int = Field(
        10_000, ge=0, description="/readyz fails while the consumer lag exceeds this"
    )


class ServeSettings(_Section):
    """The verification service (`popsync serve`): partners' look-ups and verifications."""

    bind_host: str = Field(
        "127.0.0.1",
        description="Interface the service listens on: loopback by default; the pod IP in "
        "Kubernetes, 0.0.0.0 on docker-compose's private network",
    )
    port: int = Field(8080, ge=0, le=65535, description="Port of /v1, /healthz, /readyz, /metrics")
    audit_key: SecretStr | None = Field(
        None,
        description="Secret (at least 32 characters) keying the hash of each PIN in the access "
        "audit: without it, anyone who reads the audit table could find a citizen's rows by "
        "hashing every PIN. Required by `popsync serve` and `popsync audit`; keep it stable",
    )
    pool_min_size: int = Field(2, ge=1, description="PostgreSQL connections kept open")
    pool_max_size: int = Field(8, ge=1, description="Most PostgreSQL connections of one process")
    pool_timeout_seconds: float = Field(
        2.0, gt=0, description="Longest wait for a pooled connection before answering 503"
    )
    max_in_flight: int = Field(
        256,
        ge=1,
        description="Requests one process works on at once; beyond it a request is answered "
        "503 with Retry-After at once (admission control: a queue that grows only adds latency)",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body; larger ones are refused with 413"
    )
    batch_max_items: int = Field(
        1000, ge=1, le=10_000, description="Most items of one POST /v1/verify/batch"
    )
    max_questions_per_pin: int = Field(
        20,
        ge=1,
        description="Verifications one partner may ask about one PIN a day (per process): "
        "a PIN holds its birth year, so its birth date could be found by trying 365 days; "
        "this turns that into weeks, in the audit",
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="Longest time a request's body may take to arrive (then 408)"
    )
    partner_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the service re-reads the partner directory, so that a new "
        "partner, a policy change or a revocation takes effect",
    )
    quota_lease: int = Field(
        200,
        ge=1,
        description="Items of a partner's daily quota one process takes from PostgreSQL at a "
        "time: one UPDATE per lease instead of one per request; at most this many per "
        "process go unused when the day ends",
    )
    audit_flush_seconds: float = Field(
        0.05, gt=0, description="Longest time an access-audit row waits before it is written"
    )
    audit_max_backlog: int = Field(
        100_000,
        ge=1000,
        description="Audit rows one process may hold unwritten (PostgreSQL slow or down); past "
        "it requests are refused with 503: nothing is answered that cannot be audited",
    )
    drain_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, how long requests in progress may take to finish; /readyz "
        "fails from the signal on (keep below terminationGracePeriodSeconds)",
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
    trust: TrustSettings = TrustSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    serve: ServeSettings = ServeSettings()
    # Thresholds of sector-record matching, in bits: POPSYNC_MATCHING__AUTO_LINK, __REVIEW,
    # __MARGIN (popsync.identity.MatchThresholds).
    matching: MatchThresholds = MatchThresholds()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the workers' logs"
    )


# ------------------------------------------------------------------------------ loading

ENV_PREFIX = "POPSYNC_"
# `POPSYNC_*` variables that are not settings: read elsewhere (the contract's schema folder),
# by the tests and CI, or by docker-compose. Never reported as unknown.
NOT_SETTINGS = frozenset(
    {
        "POPSYNC_SCHEMA_DIR",
        "POPSYNC_CI",
        "POPSYNC_REQUIRE_PROMETHEUS",
        "POPSYNC_POSTGRES_PASSWORD",
        "POPSYNC_GRAFANA_ADMIN_PASSWORD",
        "POPSYNC_IMAGE",
    }
)


class SettingsError(ValueError):
    """The environment does not make valid settings; `lines` says why, one line per
    variable, each naming the variable (never a secret's value)."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


def env_name(*path: str | int) -> str:
    """The variable of a field: ("processing", "batch_size") -> POPSYNC_PROCESSING__BATCH_SIZE."""
    return ENV_PREFIX + "__".join(str(part).upper() for part in path)


def _variables(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, bool]]:
    """(variable, is_secret) of every field, a section's own name too (a JSON object)."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield env_name(*path, name), False
            yield from _variables(annotation, (*path, name))
        else:
            yield env_name(*path, name), "SecretStr" in str(annotation)


VARIABLES: Mapping[str, bool] = dict(_variables(Settings))


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per `POPSYNC_*` variable that is no setting, naming the closest setting."""
    lines = []
    for given in sorted(environ):
        name = given.upper()  # pydantic-settings reads names case-insensitively
        if not name.startswith(ENV_PREFIX) or name in VARIABLES or name in NOT_SETTINGS:
            continue
        # Compared without the prefix, which every name shares and which would make
        # anything look close.
        bare = [known.removeprefix(ENV_PREFIX) for known in VARIABLES]
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), bare, n=1, cutoff=0.6)
        hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else "see docs/configuration.md"
        lines.append(f"{given}: not a popsync setting; {hint}")
    return lines


def _shown(value: Any, secret: bool) -> str:
    if secret:
        return " (value hidden: a secret)"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f" (got {text[:60]}{'...' if len(text) > 60 else ''})"
    return ""


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per invalid field: its variable, pydantic's message, the value (unless a
    secret, or a whole section)."""
    lines = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if isinstance(part, str)]
        name = env_name(*loc) if loc else ENV_PREFIX + "*"
        lines.append(
            f"{name}: {error['msg']}{_shown(error.get('input'), VARIABLES.get(name, True))}"
        )
    return lines


class _EnvironSource(EnvSettingsSource):
    """The environment source of pydantic-settings, reading `environ` instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by super().__init__, through _load_env_vars
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `environ` (default: the process environment), as `Settings()` reads
    them, refusing any `POPSYNC_*` variable that is not a setting. Raises SettingsError."""
    environ = os.environ if environ is None else environ
    unknown = unknown_variables(environ)
    if unknown:
        raise SettingsError(unknown)
    try:
        return Settings.model_validate(_EnvironSource(Settings, environ)())
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
    except PydanticSettingsError as exc:  # a section's variable that is not a JSON object
        field = re.search(r'field "([^"]+)"', str(exc))
        name = env_name(field.group(1)) if field else ENV_PREFIX + "*"
        raise SettingsError([f"{name}: not a valid JSON object"]) from None
