"""Transport security in the deployment files agrees with the topology.

Every Kafka principal the ACLs name is a worker's or a declared external one (or a
publisher's, from the directory); docker-compose and the production overlay give each
worker exactly its own principal and PostgreSQL role, over SASL, never PLAINTEXT; the
roles' grants (deploy/postgres/roles.sql) are those of the topology's tables; the broker in
compose authorizes with ACLs only.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from popsync.ops.acls import derive_acls
from popsync.settings import Settings
from popsync.topology import ADMIN_USERNAME, DATABASE_READS, EXTERNAL_PRINCIPALS, WORKERS

from .test_deploy_config import (
    REPO,
    compose,
    env_mapping,
    kustomize,
    of_kind,
    worker_deployments,
)

ROLES_SQL = REPO / "deploy" / "postgres" / "roles.sql"
KAFKA_USERS = REPO / "deploy" / "compose" / "kafka-users.sh"
WORKER_USERS = {w.name: w.sasl_username for w in WORKERS}


def test_every_acl_principal_is_in_the_topology_or_the_directory() -> None:
    publishers = ("civil-status-79",)
    declared = {w.principal for w in WORKERS} | {e.principal for e in EXTERNAL_PRINCIPALS}
    declared |= {f"User:{p}" for p in publishers}
    assert {acl.principal for acl in derive_acls(Settings(), publishers)} <= declared


def test_compose_workers_use_their_own_principal_and_role_over_sasl() -> None:
    services = compose()["services"]
    for name, user in WORKER_USERS.items():
        env = env_mapping(services[f"popsync-{name}"]["environment"])
        assert env["POPSYNC_KAFKA__SECURITY_PROTOCOL"].startswith("SASL_"), name
        assert env["POPSYNC_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["POPSYNC_KAFKA__SASL_USERNAME"] == user, name
        assert env["POPSYNC_KAFKA__SASL_PASSWORD"].startswith("${"), f"{name}: a literal secret"
        dsn = urlsplit(env["POPSYNC_POSTGRES__DSN"])
        assert dsn.username == user.replace("-", "_"), name
        assert env["POPSYNC_OBSERVABILITY__BIND_HOST"] == "0.0.0.0", name  # noqa: S104


def test_compose_creates_exactly_the_topology_users() -> None:
    script = KAFKA_USERS.read_text(encoding="utf-8")
    created = set(re.findall(r"^scram_user (\S+) ", script, re.MULTILINE))
    popsync_users = set(WORKER_USERS.values()) | {
        e.sasl_username for e in EXTERNAL_PRINCIPALS if e.sasl_username != "popsync-autoscaler"
    }
    assert created - {"schema-registry"} == popsync_users  # no KEDA in compose
    init = env_mapping(compose()["services"]["popsync-init"]["environment"])
    assert init["POPSYNC_KAFKA__SASL_USERNAME"] == ADMIN_USERNAME
    assert "popsync acls --apply" in " ".join(compose()["services"]["popsync-init"]["command"])


def test_compose_kafka_authorizes_by_acl_over_sasl_only() -> None:
    kafka = env_mapping(compose()["services"]["kafka"]["environment"])
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert set(kafka["KAFKA_SUPER_USERS"].split(";")) == {
        "User:kafka-broker",
        f"User:{ADMIN_USERNAME}",
    }
    protocols = dict(
        item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols.values()) <= {"SASL_PLAINTEXT", "SASL_SSL"}, "a PLAINTEXT listener"
    listeners = {item.split("://")[0] for item in kafka["KAFKA_LISTENERS"].split(",")}
    assert listeners <= set(protocols)


def test_compose_postgres_asks_for_scram_passwords() -> None:
    postgres = env_mapping(compose()["services"]["postgres"]["environment"])
    assert postgres["POSTGRES_INITDB_ARGS"] == "--auth=scram-sha-256"
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"


def _grants(sql: str) -> dict[str, dict[str, set[str]]]:
    """role -> privileges -> tables, from `GRANT <privs> ON <tables> TO <role>;` lines."""
    found: dict[str, dict[str, set[str]]] = {}
    pattern = r"^GRANT ([A-Z, ]+) ON (?!DATABASE|SCHEMA|ALL )(.+) TO (\w+);$"
    for privileges, tables, role in re.findall(pattern, sql, re.MULTILINE):
        by_privileges = found.setdefault(role, {})
        by_privileges.setdefault(privileges, set()).update(t.strip() for t in tables.split(","))
    return found


def test_postgres_roles_grant_what_the_topology_says() -> None:
    grants = _grants(ROLES_SQL.read_text(encoding="utf-8"))
    assert set(grants) == {w.database_role for w in WORKERS}
    for worker in WORKERS:
        expected = {"SELECT, INSERT, UPDATE, DELETE": set(worker.writes)}
        if DATABASE_READS[worker.name]:
            expected["SELECT"] = set(DATABASE_READS[worker.name])
        assert grants[worker.database_role] == expected, worker.name
    assert "CREATE" not in {p for g in grants.values() for p in g}


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return kustomize("production")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container.get("env", [])}


def test_production_workers_use_sasl_ssl_secrets_and_the_pod_ip(
    production: list[dict[str, Any]],
) -> None:
    (config,) = of_kind(production, "ConfigMap")
    assert config["data"]["POPSYNC_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["data"]["POPSYNC_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    for name, deployment in worker_deployments(production).items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = _env(container)
        assert env["POPSYNC_KAFKA__SASL_USERNAME"]["value"] == WORKER_USERS[name]
        for secret in ("POPSYNC_KAFKA__SASL_PASSWORD", "POPSYNC_POSTGRES__DSN"):
            assert "secretKeyRef" in env[secret]["valueFrom"], f"{name}: {secret}"
        assert env["POPSYNC_POSTGRES__DSN"]["valueFrom"]["secretKeyRef"]["key"] == f"dsn-{name}"
        assert env["POPSYNC_OBSERVABILITY__BIND_HOST"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "status.podIP"}
        }


def test_production_renders_no_plaintext_and_no_literal_secret(
    production: list[dict[str, Any]],
) -> None:
    for doc in production:
        for value in _strings(doc):
            assert "PLAINTEXT" not in value, value
    assert not of_kind(production, "Secret"), "production Secrets are made outside the repo"


def test_production_autoscaler_authenticates(production: list[dict[str, Any]]) -> None:
    (auth,) = of_kind(production, "TriggerAuthentication")
    params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert params == {"sasl", "username", "password", "tls"}
    for scaled in of_kind(production, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []
