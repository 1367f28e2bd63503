"""Explicit, idempotent topic provisioning through the Kafka Admin API.

Producers and workers must never rely on broker-side auto-creation: Tansu auto-creates
unknown topics with 4 partitions on the first metadata request, Apache Kafka uses its own
default, and faust refuses a table whose changelog partition count differs from its
source. So every topic is created up front with an explicit partition count, by the demo,
the tests and production alike. Only the standard Admin API is used, so this behaves the
same against Apache Kafka and against the embedded broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from popsync.adapters.kafka.logs import CLIENT_LOGGER

if TYPE_CHECKING:  # where confluent-kafka's own stubs take it from
    from confluent_kafka.admin._metadata import ClusterMetadata

__all__ = [
    "REACHABILITY_TIMEOUT_SECONDS",
    "BrokerUnreachable",
    "PartitionCountMismatchError",
    "TopicProvisioningError",
    "TopicSpec",
    "provision_topics",
    "require_broker",
]

_log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.1
# A metadata answer takes milliseconds from a live broker; this bounds how long a command
# waits for a dead one (librdkafka would otherwise retry for the whole operation timeout).
REACHABILITY_TIMEOUT_SECONDS = 5.0


class BrokerUnreachable(ConnectionError):
    """No broker of `servers` answered a metadata request within `waited` seconds."""

    def __init__(self, servers: str, waited: float, detail: str) -> None:
        super().__init__(f"no answer from {servers} within {waited:g} s: {detail}")
        self.servers = servers
        self.waited = waited
        self.detail = detail


def require_broker(
    connection: Mapping[str, str | int], timeout: float = REACHABILITY_TIMEOUT_SECONDS
) -> None:
    """Raise BrokerUnreachable unless a broker answers a metadata request within `timeout`.

    Asks for all topics, never one by name, so it cannot trigger auto-creation.
    """
    admin = AdminClient(dict(connection), logger=CLIENT_LOGGER)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        detail = error.name() if isinstance(error, KafkaError) else type(exc).__name__
        raise BrokerUnreachable(
            str(connection.get("bootstrap.servers", "?")), timeout, detail
        ) from exc


class TopicProvisioningError(RuntimeError):
    """Topics could not be created or did not become visible in time."""


class PartitionCountMismatchError(TopicProvisioningError):
    """A topic already exists with a different partition count.

    Never repaired automatically: adding partitions changes the key-to-partition mapping
    (breaking per-key ordering and co-partitioned tables), and removing them is impossible.
    """


@dataclass(frozen=True)
class TopicSpec:
    """Desired shape of one topic."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("topic name must not be empty")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be >= 1")
        if self.replication_factor < 1:
            raise ValueError(f"topic {self.name!r}: replication_factor must be >= 1")


def provision_topics(
    connection: str | Mapping[str, str | int], topics: Sequence[TopicSpec], timeout: float = 30
) -> None:
    """Create the missing `topics` and wait until metadata shows all of them.

    Idempotent: a topic that already exists with the requested partition count is
    accepted as is (its config and replication factor are not compared). A topic that
    exists with a different partition count raises `PartitionCountMismatchError`.
    Returns only once cluster metadata lists every topic with all its partitions led,
    so producers started afterwards never trigger auto-creation.
    """
    specs = _dedupe(topics)
    if not specs:
        return
    deadline = time.monotonic() + timeout
    # A bare "host:port" list, or a full librdkafka config (security settings included).
    config = {"bootstrap.servers": connection} if isinstance(connection, str) else connection
    admin = AdminClient(dict(config), logger=CLIENT_LOGGER)

    existing = _partition_counts(_list_topics(admin, deadline))
    _check_partition_counts(specs, existing)
    missing = [spec for spec in specs.values() if spec.name not in existing]
    if missing:
        _create(admin, missing, deadline)
    _wait_visible(admin, specs, deadline)


def _dedupe(topics: Sequence[TopicSpec]) -> dict[str, TopicSpec]:
    """Index specs by name; the same name twice with different specs is a caller bug."""
    specs: dict[str, TopicSpec] = {}
    for spec in topics:
        previous = specs.setdefault(spec.name, spec)
        if previous != spec:
            raise ValueError(f"conflicting specs for topic {spec.name!r}: {previous} vs {spec}")
    return specs


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _list_topics(admin: AdminClient, deadline: float) -> ClusterMetadata:
    """Metadata for all topics; never names a topic, so it cannot trigger auto-creation."""
    try:
        return admin.list_topics(timeout=max(_remaining(deadline), 1.0))
    except KafkaException as exc:
        raise TopicProvisioningError(f"cannot read cluster metadata: {exc}") from exc


def _partition_counts(metadata: ClusterMetadata) -> dict[str, int]:
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def _check_partition_counts(specs: Mapping[str, TopicSpec], existing: Mapping[str, int]) -> None:
    mismatches = [
        f"{name!r} has {existing[name]} partitions, expected {spec.partitions}"
        for name, spec in specs.items()
        if name in existing and existing[name] != spec.partitions
    ]
    if mismatches:
        raise PartitionCountMismatchError(
            "existing topics do not match their specs: " + "; ".join(mismatches)
        )


def _create(admin: AdminClient, specs: Sequence[TopicSpec], deadline: float) -> None:
    new_topics = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in specs
    ]
    wait_s = max(_remaining(deadline), 1.0)
    futures = admin.create_topics(new_topics, operation_timeout=wait_s, request_timeout=wait_s)
    raced: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=max(_remaining(deadline), 1.0))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raced.append(name)  # created concurrently by someone else: re-checked below
                continue
            raise TopicProvisioningError(f"cannot create topic {name!r}: {exc}") from exc
        except TimeoutError as exc:
            raise TopicProvisioningError(f"timed out creating topic {name!r}") from exc
        _log.info("created topic %s", name)
    if raced:
        by_name = {spec.name: spec for spec in specs}
        current = _partition_counts(_list_topics(admin, deadline))
        _check_partition_counts({name: by_name[name] for name in raced}, current)


def _wait_visible(admin: AdminClient, specs: Mapping[str, TopicSpec], deadline: float) -> None:
    """Poll metadata until every topic shows all its partitions with a leader.

    On a multi-broker Apache Kafka cluster CreateTopics can return before every broker
    has the new metadata; producing in that window may auto-create or fail.
    """
    while True:
        metadata = _list_topics(admin, deadline)
        pending = [name for name, spec in specs.items() if not _ready(metadata, spec)]
        if not pending:
            return
        if _remaining(deadline) <= 0:
            raise TopicProvisioningError(
                f"topics not visible with all partitions in metadata in time: {pending}"
            )
        time.sleep(_POLL_INTERVAL_S)


def _ready(metadata: ClusterMetadata, spec: TopicSpec) -> bool:
    topic = metadata.topics.get(spec.name)
    if topic is None or topic.error is not None:
        return False
    if len(topic.partitions) != spec.partitions:
        if len(topic.partitions) > spec.partitions:
            raise PartitionCountMismatchError(
                f"topic {spec.name!r} has {len(topic.partitions)} partitions, "
                f"expected {spec.partitions}"
            )
        return False
    return all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
