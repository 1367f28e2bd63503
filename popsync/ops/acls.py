"""`popsync acls`: every Kafka ACL popsync needs, derived, printed or applied.

The bindings come from two places only: `popsync.topology` (each worker reads what it
consumes with its own group and writes what it produces; each job writes what it produces
and reads nothing; the named external principals) and the publisher directory (each
registry, as `User:<publisher_id>`, may write the registry-events topic and nothing
else). With `allow.everyone.if.no.acl.found=false` the broker refuses everything else, so
only the validator can write validated events.

The embedded broker (Tansu) enforces no ACLs at all: there, and everywhere, the boundary
that holds is the events' signatures, which the validator checks (docs/deployment-security.md).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal, TextIO

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

from popsync.adapters.kafka.admin import TopicProvisioningError, require_broker
from popsync.adapters.kafka.logs import CLIENT_LOGGER
from popsync.adapters.postgres.database import connect
from popsync.ops.failures import EXIT_OK, UsageError
from popsync.settings import Settings
from popsync.topology import (
    ADMIN_USERNAME,
    EXTERNAL_PRINCIPALS,
    JOBS,
    WORKERS,
    TopicRole,
    consumed_topics,
    topic,
)

Operation = Literal["READ", "WRITE", "DESCRIBE"]
Resource = Literal["TOPIC", "GROUP"]

# A principal name goes into the broker's ACLs as is: refuse anything that could read as
# another principal or a pattern.
_PUBLISHER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_APPLY_TIMEOUT_S = 30.0
# What a broker without an authorizer (or without the ACL API) answers.
_NO_ACL_SUPPORT = frozenset(
    {
        KafkaError.SECURITY_DISABLED,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.INVALID_REQUEST,
    }
)
_NOT_ALLOWED = frozenset(
    {KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}
)


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding on one literally named resource, from any host."""

    principal: str
    resource_type: Resource
    resource_name: str
    operation: Operation

    def line(self) -> str:
        return f"ALLOW {self.principal} {self.operation} {self.resource_type} {self.resource_name}"

    def binding(self) -> AclBinding:
        return AclBinding(
            ResourceType[self.resource_type],
            self.resource_name,
            ResourcePatternType.LITERAL,
            self.principal,
            "*",
            AclOperation[self.operation],
            AclPermissionType.ALLOW,
        )


def derive_acls(settings: Settings, publisher_ids: Iterable[str]) -> list[Acl]:
    """Every binding, sorted and without repeats. Raises ValueError on a publisher id that
    cannot be a principal name."""
    acls: set[Acl] = set()
    for worker in WORKERS:
        acls |= _reads(settings, worker.principal, worker.consumes)
        acls.add(Acl(worker.principal, "GROUP", settings.groups.for_worker(worker.name), "READ"))
        acls |= _writes(settings, worker.principal, worker.produces)
    for job in JOBS:  # input from files: no topic read, no group
        acls |= _writes(settings, job.principal, job.produces)
    for external in EXTERNAL_PRINCIPALS:
        acls |= _reads(settings, external.principal, external.reads)
        acls |= _writes(settings, external.principal, external.writes)
        for name in external.watches:
            group = settings.groups.for_worker(name)
            acls.add(Acl(external.principal, "GROUP", group, "DESCRIBE"))
            acls |= {
                Acl(external.principal, "TOPIC", t, "DESCRIBE")
                for t in consumed_topics(settings, name)
            }
    for publisher_id in publisher_ids:
        acls |= _writes(settings, publisher_principal(publisher_id), ("registry_events",))
    return sorted(acls)


def publisher_principal(publisher_id: str) -> str:
    if not _PUBLISHER_ID.fullmatch(publisher_id):
        raise ValueError(f"publisher id {publisher_id!r} cannot be a Kafka principal")
    return f"User:{publisher_id}"


def _reads(settings: Settings, principal: str, roles: Sequence[TopicRole]) -> set[Acl]:
    names = [topic(role).name(settings) for role in roles]
    return {Acl(principal, "TOPIC", n, op) for n in names for op in ("READ", "DESCRIBE")}


def _writes(settings: Settings, principal: str, roles: Sequence[TopicRole]) -> set[Acl]:
    names = [topic(role).name(settings) for role in roles]
    return {Acl(principal, "TOPIC", n, op) for n in names for op in ("WRITE", "DESCRIBE")}


# --------------------------------------------------------------------------- the command


def kafka_acls(settings: Settings, *, apply: bool, out: TextIO) -> int:
    """Print every binding, one a line; with `apply`, create them on the broker too."""
    publisher_ids = read_publisher_ids(settings, out)
    try:
        acls = derive_acls(settings, publisher_ids)
    except ValueError as exc:
        raise UsageError(f"publisher directory: {exc}") from None
    for acl in acls:
        print(acl.line(), file=out)
    if apply:
        apply_acls(settings, acls)
        print(f"applied {len(acls)} ACLs", file=out)
    return EXIT_OK


def read_publisher_ids(settings: Settings, out: TextIO) -> list[str]:
    """The ids of publishers not revoked; none, said on `out`, before the table exists."""
    with connect(settings.postgres) as conn:
        try:
            rows = conn.execute(
                "SELECT publisher_id FROM publishers WHERE revoked_at IS NULL ORDER BY 1"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            print(
                "# no publisher directory yet (table `publishers`; `popsync db migrate`): "
                "no registry ACLs",
                file=out,
            )
            return []
    return [str(row[0]) for row in rows]


def apply_acls(settings: Settings, acls: Sequence[Acl]) -> None:
    """Create the bindings (creating one that exists is a no-op on Apache Kafka).

    The request is made in a child process: librdkafka aborts its whole process on some
    brokers' answer to CreateAcls (the embedded broker's, seen with confluent-kafka 2.16),
    and a command must fail with a line, not a core dump.
    """
    connection = settings.kafka.librdkafka()
    require_broker(connection)
    if not acls:
        return
    context = multiprocessing.get_context("spawn")  # no forked librdkafka threads
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_create_acls, args=(_config(connection), list(acls), sender))
    child.start()
    sender.close()
    outcome = _receive(receiver)
    child.join(timeout=5)
    if child.is_alive():
        child.kill()
    servers = settings.kafka.bootstrap_servers
    if outcome is None:
        raise UsageError(
            f"the broker at {servers} does not support ACLs (no usable answer to CreateAcls); "
            "the embedded broker enforces none: signatures are the boundary there"
        )
    _raise_refusal(servers, outcome)


def _receive(receiver: Connection) -> _Outcome | None:
    """The child's outcome; None if it died or hung without one."""
    try:
        if receiver.poll(_APPLY_TIMEOUT_S + 10):
            outcome: _Outcome = receiver.recv()
            return outcome
    except EOFError:
        pass
    return None


def _config(connection: Mapping[str, str | int]) -> dict[str, str | int | float | bool]:
    return dict(connection)


@dataclass(frozen=True)
class _Outcome:
    """What the child reports: nothing (all created) or the broker's error."""

    code: int | None = None
    name: str = ""


def _create_acls(
    connection: dict[str, str | int | float | bool], acls: list[Acl], sender: Connection
) -> None:
    # librdkafka's assertion message on such a crash is noise: the parent says it in a line.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    admin = AdminClient(connection, logger=CLIENT_LOGGER)
    outcome = _Outcome()
    try:
        futures = admin.create_acls(
            [acl.binding() for acl in acls], request_timeout=_APPLY_TIMEOUT_S
        )
        for future in futures.values():
            future.result(timeout=_APPLY_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError):
            outcome = _Outcome(error.code(), error.name())
        else:
            outcome = _Outcome(KafkaError._FAIL, type(exc).__name__)
    sender.send(outcome)
    sender.close()


def _raise_refusal(servers: str, outcome: _Outcome) -> None:
    """One line for a broker that cannot or will not take the ACLs."""
    if outcome.code is None:
        return
    if outcome.code in _NO_ACL_SUPPORT:
        raise UsageError(
            f"the broker at {servers} does not support ACLs ({outcome.name}); "
            "the embedded broker enforces none: signatures are the boundary there"
        )
    if outcome.code in _NOT_ALLOWED:
        raise UsageError(
            f"the broker at {servers} refused to create ACLs ({outcome.name}): run as "
            f"the admin principal (POPSYNC_KAFKA__SASL_USERNAME={ADMIN_USERNAME})"
        )
    raise TopicProvisioningError(f"the broker at {servers} did not create the ACLs: {outcome.name}")
