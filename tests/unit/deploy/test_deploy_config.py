"""The deployment files agree with the code, and with their formats.

A misspelled top-level POPSYNC_* variable is silently ignored by pydantic-settings, and a
misspelled worker name only fails when the container starts, so both are checked here,
against docker-compose.yml and deploy/k8s/. The workers, the topics they consume and their
consumer groups are those of popsync.topology as each container's settings name them: one
Deployment and one compose service per worker, the init step creating the topics the
workers read, KEDA scaling each worker on exactly its own topics and group. Each HTTP
service (HTTP_SERVICES) has one Deployment with its Service, autoscaler, disruption budget,
NetworkPolicy and ServiceMonitor, one compose service, and its PostgreSQL role. Each job
(JOBS, run by an operator) has one suspended CronJob to make its Jobs from, one compose
service in a profile of its own, its Kafka user and its PostgreSQL role (and schema).

docker-compose.yml is validated against the compose specification (check-jsonschema's
vendored schema), the Dockerfile is linted (hadolint), and every overlay is rendered
(kubectl kustomize) and validated against the Kubernetes schemas (kubernetes-validate);
custom resources (ServiceMonitor, KEDA ScaledObject) are checked field by field. The tools
come with the `dev` extra; without one a test skips, except under POPSYNC_CI=1 (.ci/run),
where it fails.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from popsync import cli
from popsync.contract.schemas import SCHEMA_DIR_ENV
from popsync.dev.embedded.postgres import SERVER_OPTIONS
from popsync.ops.acls import derive_acls
from popsync.ops.failures import EXIT_REFUSED, EXIT_USAGE
from popsync.runtime.drain import STOP_MARGIN_SECONDS
from popsync.settings import Settings, WorkerName
from popsync.topology import (
    ADMIN_USERNAME,
    APPEND_ONLY_TABLES,
    EXTERNAL_PRINCIPALS,
    HTTP_SERVICES,
    JOBS,
    WORKERS,
    HttpService,
    Job,
    consumed_topics,
    database_grants,
    scratch_schemas,
)

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[3]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
# POPSYNC_* variables popsync reads outside Settings.
NON_SETTINGS_VARS = {SCHEMA_DIR_ENV}
# Oldest Kubernetes the manifests target (unhealthyPodEvictionPolicy, matchLabelKeys), and
# the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", "latest")
# Kinds that are not in the Kubernetes schemas: each is checked by its own test below.
CUSTOM_KINDS = {
    "monitoring.coreos.com/v1": {"ServiceMonitor"},
    "keda.sh/v1alpha1": {"ScaledObject", "TriggerAuthentication"},
}
COMPONENT = "app.kubernetes.io/component"
WORKER_NAMES: tuple[WorkerName, ...] = tuple(worker.name for worker in WORKERS)
SERVICE_NAMES = tuple(service.name for service in HTTP_SERVICES)
JOB_NAMES = tuple(job.name for job in JOBS)
# The backfill's goal: its resident set, with its parts', under 1 GB for 10 M events
# (bench/README.md#backfill, judged by bench.backfill as `rss_below_1gb`).
BACKFILL_RSS_GOAL_MIB = 1024
ARCHIVES_CLAIM = "popsync-archives"


def require_tool(name: str) -> str:
    """The executable's path; skip without it, but fail under POPSYNC_CI=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (it comes with: pip install -e '.[dev]')"
        if os.environ.get("POPSYNC_CI") == "1":
            pytest.fail(f"{message}; POPSYNC_CI=1 requires it")
        pytest.skip(message)
    return path


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = "POPSYNC_") -> set[str]:
    """Every environment variable Settings reads: leaves, and sections (as JSON)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name.upper()}"
        names.add(key)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= settings_env_names(field.annotation, f"{key}__")
    return names


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a YAML tree, inline kustomize patches included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
        if isinstance(node.get("patch"), str):
            yield from walk(yaml.safe_load(node["patch"]))
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def env_mapping(environment: Mapping[str, Any] | list[str] | None) -> dict[str, str]:
    """A compose `environment:` (map or KEY=VALUE list) as a dict."""
    if isinstance(environment, list):
        return {key: value for key, _, value in (item.partition("=") for item in environment)}
    return {key: "" if value is None else str(value) for key, value in (environment or {}).items()}


def k8s_env(docs: list[Any], base_dir: Path | None = None) -> dict[str, str]:
    """POPSYNC_* names (with values where literal) set by ConfigMaps, generators, `env:`."""
    found: dict[str, str] = {}
    for node in walk(docs):
        if node.get("kind") == "ConfigMap":
            found.update({k: str(v) for k, v in (node.get("data") or {}).items()})
        for generator in node.get("configMapGenerator") or []:
            lines = list(generator.get("literals") or [])
            for env_file in generator.get("envs") or []:
                assert base_dir is not None
                lines += (base_dir / env_file).read_text(encoding="utf-8").splitlines()
            for line in lines:
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    found[key.strip()] = value
        env = node.get("env")
        if isinstance(env, list):
            for var in env:
                if isinstance(var, dict) and "name" in var:
                    found.setdefault(var["name"], str(var.get("value", "")))
    return {k: v for k, v in found.items() if k.startswith("POPSYNC_")}


def worker_names(command: Any) -> list[str]:
    """Names following `worker` in a command or args (list, or a shell string)."""
    if command is None:
        return []
    items = [command] if isinstance(command, str) else command
    words = [word for item in items for word in shlex.split(str(item))]
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "worker"]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


def container_commands(docs: list[Any]) -> Iterator[Any]:
    for node in walk(docs):
        if "image" in node and ("args" in node or "command" in node):
            yield (node.get("command") or []) + (node.get("args") or [])


@functools.cache
def _rendered(target: str) -> tuple[dict[str, Any], ...]:
    path = K8S / "base" if target == "base" else K8S / "overlays" / target
    result = run_tool("kubectl", "kustomize", str(path))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def kustomize(target: str) -> list[dict[str, Any]]:
    """The overlay (or "base") as `kubectl kustomize` renders it (a fresh copy per call)."""
    return copy.deepcopy(list(_rendered(target)))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def by_component(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind keyed by their app.kubernetes.io/component label."""
    found: dict[str, dict[str, Any]] = {}
    for doc in of_kind(docs, kind):
        component = doc["metadata"].get("labels", {}).get(COMPONENT)
        assert component not in found, f"two {kind}s for {component}"
        found[component] = doc
    return found


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A full label selector (matchLabels and matchExpressions) against labels."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        found = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in (values or []),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not found:
            return False
    return True


def job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """A Job's spec, or a CronJob's template of one."""
    spec: dict[str, Any] = (
        doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    )
    return spec


def pod_templates(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pod template: Deployments', Jobs' and CronJobs'."""
    templates = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")]
    return templates + [job_spec(d)["template"] for d in of_kind(docs, "CronJob")]


def worker_deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    deployments = by_component(docs, "Deployment")
    assert sorted(deployments) == sorted(WORKER_NAMES + SERVICE_NAMES)
    return {name: d for name, d in deployments.items() if name in WORKER_NAMES}


def service_deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    deployments = by_component(docs, "Deployment")
    assert sorted(deployments) == sorted(WORKER_NAMES + SERVICE_NAMES)
    return {name: d for name, d in deployments.items() if name in SERVICE_NAMES}


def overlay_settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from(k8s_env(of_kind(docs, "ConfigMap")), monkeypatch)


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, container) of every Deployment's, Job's and CronJob's containers, init ones
    included."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            spec = job_spec(doc) if doc["kind"] == "CronJob" else doc["spec"]
            pod = spec["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield doc["kind"], container


def job_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each job's CronJob (its Jobs' template), by job name."""
    cron_jobs = by_component(docs, "CronJob")
    assert sorted(cron_jobs) == sorted(JOB_NAMES)
    return cron_jobs


def container_settings(
    docs: list[dict[str, Any]], container: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings as this container reads them: its ConfigMaps, then its own literal `env:`
    (values from Secrets left at the code's defaults)."""
    maps = {doc["metadata"]["name"]: doc.get("data") or {} for doc in of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
    env.update({v["name"]: str(v["value"]) for v in container.get("env", []) if "value" in v})
    return settings_from({k: v for k, v in env.items() if k.startswith("POPSYNC_")}, monkeypatch)


def k8s_worker_settings(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> dict[WorkerName, Settings]:
    """Each worker's settings, as its Deployment's container reads them."""
    deployments = worker_deployments(docs)
    found: dict[WorkerName, Settings] = {}
    for worker in WORKER_NAMES:
        (container,) = deployments[worker]["spec"]["template"]["spec"]["containers"]
        found[worker] = container_settings(docs, container, monkeypatch)
    return found


def compose_settings(service: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = env_mapping(service.get("environment"))
    return settings_from({k: v for k, v in env.items() if k.startswith("POPSYNC_")}, monkeypatch)


def compose_name(service: HttpService) -> str:
    """An HTTP service's compose service, named for its command: popsync-serve."""
    return f"popsync-{service.command}"


def compose_worker_settings(monkeypatch: pytest.MonkeyPatch) -> dict[WorkerName, Settings]:
    services = compose()["services"]
    return {
        name: compose_settings(services[f"popsync-{name}"], monkeypatch) for name in WORKER_NAMES
    }


def ports_of(addresses: str) -> set[int]:
    """Ports of a `host:port,host:port` list."""
    return {int(address.rsplit(":", 1)[1]) for address in addresses.split(",")}


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a container with exactly `env` would read them."""
    for key in [k for k in os.environ if k.upper().startswith("POPSYNC_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


# --- docker-compose.yml -------------------------------------------------------------


def test_compose_popsync_variables_are_settings() -> None:
    known = settings_env_names() | NON_SETTINGS_VARS
    used: set[str] = set()
    for service in compose()["services"].values():
        used |= {k for k in env_mapping(service.get("environment")) if k.startswith("POPSYNC_")}
    assert "POPSYNC_POSTGRES__DSN" in used
    assert used <= known, f"not popsync settings: {sorted(used - known)}"


def test_compose_values_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in compose()["services"].values():
        env = {
            k: v
            for k, v in env_mapping(service.get("environment")).items()
            if k.startswith("POPSYNC_")
        }
        if env:
            settings_from(env, monkeypatch)


def test_compose_runs_each_worker_once() -> None:
    services = compose()["services"]
    names = [n for s in services.values() for n in worker_names(s.get("command"))]
    assert sorted(names) == sorted(WORKER_NAMES)
    for name in WORKER_NAMES:
        service = services[f"popsync-{name}"]
        # The image's entrypoint is `popsync` (test_image_runs_popsync).
        assert "entrypoint" not in service, name
        assert service["command"] == ["worker", name]


def test_compose_init_creates_the_topics_the_workers_use(monkeypatch: pytest.MonkeyPatch) -> None:
    init = compose()["services"]["popsync-init"]
    steps = [step.strip() for step in " ".join(init["command"]).split("&&")]
    assert "popsync topics create" in steps
    created = compose_settings(init, monkeypatch).topics
    for name, settings in compose_worker_settings(monkeypatch).items():
        assert settings.topics == created, f"{name} reads topics the init did not create"


def test_image_runs_popsync() -> None:
    """Deployments and compose pass only `worker NAME`: the image's entrypoint is popsync."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT")]
    assert entrypoint == 'ENTRYPOINT ["popsync"]'


def test_the_image_ships_every_service() -> None:
    """The image installs the wheel, which holds the packages pyproject.toml lists and no
    others: each folder of services/ must be one of them, as popsync.services.<folder>, or
    its command fails in the container and only there (the checkout imports it anyway)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = pyproject["tool"]["setuptools"]
    assert setuptools["package-dir"]["popsync.services"] == "services"
    packages = set(setuptools["packages"])
    folders = {init.parent.name for init in (REPO / "services").glob("*/__init__.py")}
    assert {"validator", "backfill"} <= folders
    assert {f"popsync.services.{folder}" for folder in folders} <= packages


def test_compose_validates_against_the_compose_spec() -> None:
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_lints_clean() -> None:
    result = run_tool("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_is_the_production_like_stack() -> None:
    services = compose()["services"]
    kafka = env_mapping(services["kafka"]["environment"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert not any(name.startswith("zookeeper") for name in services)
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["postgres"]["image"].startswith("postgres:")
    # One image for every popsync container, built from the one Dockerfile.
    popsync = {k: v for k, v in services.items() if k.startswith("popsync-")}
    assert {s["image"] for s in popsync.values()} == {compose()["x-popsync"]["image"]}
    assert all(s["build"]["context"] == "." for s in popsync.values())
    # Prometheus loads the repository's config and rules, Grafana its provisioning.
    mounts = {
        name: {m.split(":")[1]: REPO / m.split(":")[0] for m in services[name]["volumes"]}
        for name in ("prometheus", "grafana")
    }
    prometheus_dir = mounts["prometheus"]["/etc/prometheus"]
    assert (prometheus_dir / "prometheus.yml").is_file()
    assert (prometheus_dir / "rules.yml").is_file()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    provisioning = mounts["grafana"]["/etc/grafana/provisioning"]
    assert (provisioning / "datasources").is_dir()
    providers = yaml.safe_load(
        (provisioning / "dashboards" / "popsync.yml").read_text(encoding="utf-8")
    )["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert list(mounts["grafana"][dashboards_path].glob("*.json")), dashboards_path


def test_compose_postgres_is_sized_as_the_embedded_one() -> None:
    command = compose()["services"]["postgres"]["command"]
    assert command == ["postgres", *(arg for s in SERVER_OPTIONS for arg in ("-c", s))]


def test_compose_workers_serve_their_endpoint_to_prometheus() -> None:
    port = Settings().observability.port  # compose does not override it
    services = compose()["services"]
    workers = {name: s for name, s in services.items() if worker_names(s.get("command"))}
    for name, service in workers.items():
        assert str(port) in [str(p) for p in service["expose"]], name
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in check, name
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text("utf-8"))
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "popsync")
    (dns,) = job["dns_sd_configs"]
    assert dns["port"] == port
    assert sorted(dns["names"]) == sorted(workers)
    # The worker label Prometheus derives from the service name is the worker's name.
    (relabel,) = [r for r in job["relabel_configs"] if r["target_label"] == "worker"]
    # (A name the regex does not match drops out, and the sets differ.)
    labels = {m.group(1) for name in workers if (m := re.fullmatch(relabel["regex"], name))}
    assert labels == set(WORKER_NAMES)


def test_compose_runs_each_http_service_on_postgres_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    worker = compose()["x-popsync-worker"]
    for service in HTTP_SERVICES:
        name = compose_name(service)
        spec = services[name]
        # The image's entrypoint is `popsync` (test_image_runs_popsync).
        assert "entrypoint" not in spec, name
        assert spec["command"] == [service.command]
        # The schema exists and its role has its grants before it starts.
        for step in ("popsync-init", "postgres-roles"):
            assert spec["depends_on"][step] == {"condition": "service_completed_successfully"}
        env = env_mapping(spec["environment"])
        assert not [k for k in env if k.startswith("POPSYNC_KAFKA__")], f"{name}: no Kafka"
        assert urlsplit(env["POPSYNC_POSTGRES__DSN"]).username == service.database_role
        assert env["POPSYNC_SERVE__AUDIT_KEY"].startswith("${"), f"{name}: a literal secret"
        assert env["POPSYNC_SERVE__BIND_HOST"] == "0.0.0.0"  # noqa: S104
        port = compose_settings(spec, monkeypatch).serve.port
        check = " ".join(spec["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in check, name
        # Published, if at all, on the host's loopback only.
        for published in map(str, spec.get("ports", [])):
            assert published.startswith("127.0.0.1:"), published
            assert published.rsplit(":", 1)[1] == str(port), published
        assert spec["security_opt"] == worker["security_opt"], name
        assert spec["cap_drop"] == worker["cap_drop"], name
        assert spec["restart"] == worker["restart"], name


def test_compose_runs_each_job_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's service is in a profile of its own, so `docker compose up` never starts it
    (`docker compose run --rm popsync-<job> …` does), runs once, as its own Kafka user and
    PostgreSQL role, once the schema, topics, ACLs and roles exist."""
    services = compose()["services"]
    popsync = compose()["x-popsync"]
    workers = compose_worker_settings(monkeypatch)
    names = {f"popsync-{job.name}" for job in JOBS}
    # Everything else starts with `docker compose up`.
    assert {name for name, spec in services.items() if "profiles" in spec} == names
    for job in JOBS:
        name = f"popsync-{job.name}"
        spec = services[name]
        assert spec["profiles"] == [job.name]
        # The image's entrypoint is `popsync` (test_image_runs_popsync).
        assert "entrypoint" not in spec, name
        assert spec["command"][0] == job.command
        assert spec["restart"] == "no", name
        for step in ("popsync-init", "postgres-roles"):
            assert spec["depends_on"][step] == {"condition": "service_completed_successfully"}
        env = env_mapping(spec["environment"])
        assert env["POPSYNC_KAFKA__SECURITY_PROTOCOL"].startswith("SASL_"), name
        assert env["POPSYNC_KAFKA__SASL_USERNAME"] == job.sasl_username, name
        assert env["POPSYNC_KAFKA__SASL_PASSWORD"].startswith("${"), f"{name}: a literal secret"
        assert urlsplit(env["POPSYNC_POSTGRES__DSN"]).username == job.database_role, name
        assert spec["security_opt"] == popsync["security_opt"], name
        assert spec["cap_drop"] == popsync["cap_drop"], name
        # What it produces goes to the topics the workers use.
        topics = compose_settings(spec, monkeypatch).topics
        assert all(settings.topics == topics for settings in workers.values()), name
    # The backfill reads the archives from ./archives, and may not change them.
    assert services["popsync-backfill"]["volumes"] == ["./archives:/archives:ro"]


def test_prometheus_scrapes_each_http_service_as_its_own_job() -> None:
    """Its job is named as its Deployment (the ServiceMonitor's job in Kubernetes), which
    the rules select; the workers' job and alerts never include it."""
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text("utf-8"))
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    port = Settings().serve.port  # compose does not override it
    for service in HTTP_SERVICES:
        job = jobs[service.deployment]
        assert job["metrics_path"] == "/metrics"
        (dns,) = job["dns_sd_configs"]
        assert dns["names"] == [compose_name(service)]
        assert dns["port"] == port
        assert compose_name(service) not in jobs["popsync"]["dns_sd_configs"][0]["names"]


# --- deploy/k8s ----------------------------------------------------------------------


def test_k8s_popsync_variables_are_settings() -> None:
    known = settings_env_names() | NON_SETTINGS_VARS
    used: set[str] = set()
    for path in k8s_files():
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        used |= set(k8s_env(docs, path.parent))
    assert {"POPSYNC_POSTGRES__DSN", "POPSYNC_TOPICS__PARTITIONS"} <= used
    assert used <= known, f"not popsync settings: {sorted(used - known)}"


def test_k8s_worker_names_are_workers() -> None:
    names: list[str] = []
    for path in k8s_files():
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        names += [n for cmd in container_commands(docs) for n in worker_names(cmd)]
    assert sorted(names) == sorted(WORKER_NAMES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize(overlay)
    config = k8s_env(of_kind(docs, "ConfigMap"))
    assert config, f"{overlay}: no POPSYNC_* ConfigMap"
    assert set(config) <= settings_env_names() | NON_SETTINGS_VARS
    settings_from(config, monkeypatch)  # values parse, nested names exist
    workers = [n for cmd in container_commands(docs) for n in worker_names(cmd)]
    assert sorted(workers) == sorted(WORKER_NAMES)


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_k8s_runs_each_worker_once(target: str) -> None:
    for name, deployment in worker_deployments(kustomize(target)).items():
        assert deployment["metadata"]["name"] == f"popsync-{name}"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        # The image's entrypoint is `popsync` (test_image_runs_popsync).
        assert "command" not in container, name
        assert container["args"] == ["worker", name]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_init_creates_the_topics_the_workers_use(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    creators = [
        (kind, container)
        for kind, container in containers(docs)
        if container.get("args") == ["topics", "create"]
    ]
    ((kind, creator),) = creators
    assert kind == "Job"
    created = container_settings(docs, creator, monkeypatch).topics
    for name, settings in k8s_worker_settings(docs, monkeypatch).items():
        assert settings.topics == created, f"{overlay}: {name} reads topics not created"


def test_dead_letter_limit_applies_alike_to_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """No deploy file gives one worker its own limit, nor turns the ratio off (a ratio of 1
    is never exceeded)."""
    stacks = {"compose": compose_worker_settings(monkeypatch)}
    for overlay in OVERLAYS:
        stacks[overlay] = k8s_worker_settings(kustomize(overlay), monkeypatch)
    for where, workers in stacks.items():
        limits = {settings.dead_letter_limit for settings in workers.values()}
        assert len(limits) == 1, f"{where}: a worker-specific dead-letter limit"
        (limit,) = limits
        assert limit.max_ratio < 1, f"{where}: the dead-letter ratio limit is off"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    latest = kubernetes_validate.utils.latest_version()
    docs = kustomize(overlay)
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS.get(doc["apiVersion"], set()):
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(
                    doc, latest if version == "latest" else version, strict=True
                )
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(
                    f"{overlay}: {doc['kind']}/{doc['metadata']['name']} {version}: "
                    f"{path}: {error.message}"
                )
        checked += 1
    assert checked >= 12, f"{overlay}: only {checked} core objects rendered"
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in docs}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "ConfigMap"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("batch/v1", "CronJob"),
    } <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_have_probes_resources_service_and_pdb(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    port = overlay_settings(docs, monkeypatch).observability.port
    services = by_component(docs, "Service")
    budgets = by_component(docs, "PodDisruptionBudget")
    for worker, deployment in worker_deployments(docs).items():
        pod = deployment["spec"]["template"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
        (container,) = pod["spec"]["containers"]
        (metrics_port,) = [p for p in container["ports"] if p["name"] == "metrics"]
        assert metrics_port["containerPort"] == port, worker
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, worker
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), worker
        assert container["envFrom"][0]["configMapRef"]["name"].startswith("popsync-config")
        # The metrics Service and the disruption budget cover exactly this worker's pods.
        service = services[worker]
        assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
        assert service["spec"]["selector"][COMPONENT] == worker
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
        ]
        budget = budgets[worker]["spec"]
        assert selects(budget["selector"]["matchLabels"], pod["metadata"]["labels"])
        assert budget["selector"]["matchLabels"][COMPONENT] == worker
        assert budget.get("maxUnavailable") == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_every_worker_as_the_rules_expect(overlay: str) -> None:
    docs = kustomize(overlay)
    (monitor,) = [m for m in of_kind(docs, "ServiceMonitor") if m["metadata"]["name"] == "popsync"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    selected = [
        s for s in of_kind(docs, "Service") if matches(spec["selector"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["labels"][COMPONENT] for s in selected) == sorted(WORKER_NAMES)
    # job="popsync" and worker=<name> on every target, as deploy/prometheus/rules.yml uses.
    assert {s["metadata"]["labels"][spec["jobLabel"]] for s in selected} == {"popsync"}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
        "targetLabel": "worker",
    } in endpoint["relabelings"]
    # Lagging (not-ready) pods are scraped too.
    assert all(s["spec"].get("publishNotReadyAddresses") is True for s in selected)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_allows_kafka_postgres_and_scrapes_only(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    settings = overlay_settings(docs, monkeypatch)
    (policy,) = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "popsync"]
    spec = policy["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    # Workers and the init Job; the HTTP services have policies of their own.
    pods = [
        pod
        for pod in pod_templates(docs)
        if pod["metadata"]["labels"][COMPONENT] not in SERVICE_NAMES
    ]
    assert pods and all(matches(spec["podSelector"], pod["metadata"]["labels"]) for pod in pods)
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": settings.observability.port}]
    # Prometheus's namespace (and, in production, its pods) only: never an address block.
    assert all(set(peer) <= {"namespaceSelector", "podSelector"} for peer in ingress["from"])
    assert all("namespaceSelector" in peer for peer in ingress["from"])
    if overlay == "production":
        assert all("podSelector" in peer for peer in ingress["from"])
    # Every egress rule names its ports: none is an allow-all.
    assert all(rule.get("ports") for rule in spec["egress"])
    egress = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    dsns = [
        base64.b64decode(secret["data"]["dsn"]).decode()
        for secret in of_kind(docs, "Secret")
        if "dsn" in secret.get("data", {})
    ] or [settings.postgres.dsn.get_secret_value()]  # production: a Secret made elsewhere
    expected = {("UDP", 53), ("TCP", 53)}
    expected |= {("TCP", p) for p in ports_of(settings.kafka.bootstrap_servers)}
    expected |= {("TCP", urlsplit(dsn).port or 5432) for dsn in dsns}
    assert egress == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_never_exceed_partitions(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No more consumers than partitions, whether set in the manifest or by KEDA."""
    docs = kustomize(overlay)
    settings = overlay_settings(docs, monkeypatch)
    partitions = settings.topics.partitions
    deployments = worker_deployments(docs)
    for name, deployment in deployments.items():
        replicas = deployment["spec"].get("replicas", 1)
        assert replicas <= partitions, (
            f"{overlay} {name}: {replicas} replicas > {partitions} partitions; "
            "the extra consumers would sit idle"
        )
    for scaled in of_kind(docs, "ScaledObject"):
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, (
            f"{overlay} {scaled['metadata']['name']}: replicas "
            f"{spec['minReplicaCount']}..{spec['maxReplicaCount']}, {partitions} partitions"
        )


def test_production_autoscales_each_worker_on_its_own_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = kustomize("production")
    deployments = worker_deployments(docs)
    # KEDA owns the replica count: a count in the manifest would reset it on each apply.
    assert all("replicas" not in d["spec"] for d in deployments.values())
    scaled = by_component(docs, "ScaledObject")
    assert sorted(scaled) == sorted(WORKER_NAMES)
    for worker, settings in k8s_worker_settings(docs, monkeypatch).items():
        assert settings.topics.replication_factor == 3
        obj = scaled[worker]
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == deployments[worker]["metadata"]["name"]
        assert spec["maxReplicaCount"] == settings.topics.partitions
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        metadata = [t["metadata"] for t in triggers]
        # One trigger per topic the worker consumes (the topology, as its settings name them).
        topics = sorted(m["topic"] for m in metadata)
        assert topics == sorted(consumed_topics(settings, worker)), worker
        for meta in metadata:
            assert meta["consumerGroup"] == settings.groups.for_worker(worker)
            assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
            # Scale out before the pods' lag makes them report not ready.
            assert 0 < int(meta["lagThreshold"]) < settings.observability.ready_max_lag
            assert meta.get("allowIdleConsumers", "false") == "false"
            assert meta["offsetResetPolicy"] == "earliest"


def test_pods_and_containers_wait_longer_than_a_drain() -> None:
    """SIGKILL must not come before the worker's own grace period and watchdog are over,
    nor before an HTTP service has had its preStop sleep, its requests in progress their
    drain and its unwritten audit rows as long again (services/verification/app.py)."""
    settings = Settings()
    longest_drain = settings.processing.shutdown_grace_seconds + STOP_MARGIN_SECONDS
    service_stop = 2 * settings.serve.drain_seconds
    periods = [
        int(doc["terminationGracePeriodSeconds"])
        for path in k8s_files()
        for doc in walk(list(yaml.safe_load_all(path.read_text(encoding="utf-8"))))
        if "terminationGracePeriodSeconds" in doc
    ]
    assert len(periods) == len(WORKER_NAMES) + len(SERVICE_NAMES)
    for target in ("base", *OVERLAYS):
        docs = kustomize(target)
        for deployments, drain in (
            (worker_deployments(docs), longest_drain),
            (service_deployments(docs), service_stop),
        ):
            for name, deployment in deployments.items():
                pod = deployment["spec"]["template"]["spec"]
                (container,) = pod["containers"]
                pre_stop = container.get("lifecycle", {}).get("preStop", {})
                sleep = pre_stop.get("sleep", {}).get("seconds", 0)
                assert pod["terminationGracePeriodSeconds"] > sleep + drain, f"{target} {name}"
    compose_grace = compose()["x-popsync-worker"]["stop_grace_period"]
    assert int(compose_grace.removesuffix("s")) > longest_drain
    for service in HTTP_SERVICES:
        grace = compose()["services"][compose_name(service)]["stop_grace_period"]
        assert int(grace.removesuffix("s")) > service_stop, service.name


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_k8s_runs_each_http_service_once(target: str) -> None:
    declared: dict[str, HttpService] = {service.name: service for service in HTTP_SERVICES}
    for name, deployment in service_deployments(kustomize(target)).items():
        assert deployment["metadata"]["name"] == declared[name].deployment
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "command" not in container, name
        assert container["args"] == [declared[name].command]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_services_have_probes_resources_service_autoscaler_and_pdb(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    services = by_component(docs, "Service")
    budgets = by_component(docs, "PodDisruptionBudget")
    autoscalers = by_component(docs, "HorizontalPodAutoscaler")
    assert sorted(autoscalers) == sorted(SERVICE_NAMES)  # workers scale by lag (KEDA)
    for name, deployment in service_deployments(docs).items():
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        (container,) = pod["spec"]["containers"]
        port = container_settings(docs, container, monkeypatch).serve.port
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), name
        # Restricted like the workers.
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        env = _env(container)
        assert env["POPSYNC_SERVE__BIND_HOST"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "status.podIP"}
        }
        for secret in ("POPSYNC_SERVE__AUDIT_KEY", "POPSYNC_POSTGRES__DSN"):
            assert "secretKeyRef" in env[secret]["valueFrom"], f"{name}: {secret}"
        assert not [k for k in env if k.startswith("POPSYNC_KAFKA__")], f"{name}: no Kafka"
        # A rollout never lowers capacity.
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        # Traffic: a ClusterIP Service, to ready pods only.
        service = services[name]["spec"]
        assert service.get("type", "ClusterIP") == "ClusterIP"
        assert "clusterIP" not in service, f"{name}: headless"
        assert not service.get("publishNotReadyAddresses"), name
        assert selects(service["selector"], labels)
        assert service["selector"][COMPONENT] == name
        assert service["ports"] == [
            {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
        ]
        # The autoscaler scales this Deployment on CPU, from at least two pods.
        hpa = autoscalers[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        assert deployment["spec"].get("replicas", hpa["minReplicas"]) == hpa["minReplicas"]
        assert [(m["type"], m["resource"]["name"]) for m in hpa["metrics"]] == [("Resource", "cpu")]
        # One pod at a time may go, so another keeps answering.
        budget = budgets[name]["spec"]
        assert matches(budget["selector"], labels)
        assert budget["selector"]["matchLabels"][COMPONENT] == name
        assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 1
        assert hpa["minReplicas"] > budget.get("minAvailable", 0), f"{name}: drains blocked"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_under_exactly_one_network_policy(overlay: str) -> None:
    """Policies add up: a pod two policies select gets the union of what they allow."""
    docs = kustomize(overlay)
    policies = of_kind(docs, "NetworkPolicy")
    for pod in pod_templates(docs):
        labels = pod["metadata"]["labels"]
        selecting = [p for p in policies if matches(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, (labels[COMPONENT], [p["metadata"]["name"] for p in selecting])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_service_network_policy_admits_its_ingress_and_prometheus_and_reaches_postgres(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy")}
    (prometheus,) = policies["popsync"]["ingress"]  # the workers': Prometheus only
    for name, deployment in service_deployments(docs).items():
        spec = policies[deployment["metadata"]["name"]]
        assert matches(spec["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        settings = container_settings(docs, container, monkeypatch)
        # The ingress controller (partners, /v1/) and Prometheus, to the HTTP port only.
        assert len(spec["ingress"]) == 2
        assert prometheus["from"] in [rule["from"] for rule in spec["ingress"]]
        for rule in spec["ingress"]:
            assert rule["ports"] == [{"protocol": "TCP", "port": settings.serve.port}], name
            assert all(set(peer) <= {"namespaceSelector", "podSelector"} for peer in rule["from"])
            assert all("namespaceSelector" in peer for peer in rule["from"])
            if overlay == "production":
                assert all("podSelector" in peer for peer in rule["from"])
        # PostgreSQL and DNS; no Kafka.
        assert all(rule.get("ports") for rule in spec["egress"])
        egress = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
        dsns = [
            base64.b64decode(secret["data"]["dsn"]).decode()
            for secret in of_kind(docs, "Secret")
            if "dsn" in secret.get("data", {})
        ] or [settings.postgres.dsn.get_secret_value()]
        expected = {("UDP", 53), ("TCP", 53)} | {("TCP", urlsplit(d).port or 5432) for d in dsns}
        assert egress == expected, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_each_http_service_as_its_own_job(overlay: str) -> None:
    docs = kustomize(overlay)
    monitors = {m["metadata"]["name"]: m["spec"] for m in of_kind(docs, "ServiceMonitor")}
    rules = (REPO / "deploy" / "prometheus" / "rules.yml").read_text(encoding="utf-8")
    for service in HTTP_SERVICES:
        spec = monitors[service.deployment]
        selected = [
            s["metadata"]["name"]
            for s in of_kind(docs, "Service")
            if matches(spec["selector"], s["metadata"]["labels"])
        ]
        assert selected == [service.deployment]
        # No jobLabel: the job is the Service's name, which the rules select.
        assert "jobLabel" not in spec
        assert f'job="{service.deployment}"' in rules
        (endpoint,) = spec["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity.removesuffix(unit)) * factor
    return float(quantity) / 2**20


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_k8s_makes_each_job_from_a_suspended_template(target: str) -> None:
    """A CronJob that never runs by itself: `kubectl apply` keeps the template current (a
    Job's pod template cannot change), an operator makes each run a Job of it. A failed pod
    is retried (the run resumes), but not on an exit code a retry cannot change."""
    declared: dict[str, Job] = {job.name: job for job in JOBS}
    for name, cron in job_templates(kustomize(target)).items():
        assert cron["metadata"]["name"] == f"popsync-{name}"
        assert cron["spec"]["suspend"] is True, name
        assert cron["spec"]["concurrencyPolicy"] == "Forbid", name
        assert cron["spec"]["jobTemplate"]["metadata"]["labels"][COMPONENT] == name
        spec = job_spec(cron)
        pod = spec["template"]
        assert pod["metadata"]["labels"][COMPONENT] == name
        (container,) = pod["spec"]["containers"]
        # The image's entrypoint is `popsync`; the arguments are the command's own.
        assert "command" not in container, name
        assert container["args"][0] == declared[name].command
        parsed = cli.build_parser().parse_args(container["args"])
        assert parsed.command == declared[name].command
        assert pod["spec"]["restartPolicy"] == "Never", name
        assert spec["backoffLimit"] >= 1, name
        assert spec["activeDeadlineSeconds"] > 0, name
        assert spec["ttlSecondsAfterFinished"] > 0, name
        rules = spec["podFailurePolicy"]["rules"]
        assert {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": container["name"],
                "operator": "In",
                "values": [EXIT_REFUSED, EXIT_USAGE],
            },
        } in rules, name
        assert {
            "action": "Ignore",
            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
        } in rules
        # Restricted like the workers.
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["envFrom"][0]["configMapRef"]["name"].startswith("popsync-config")
        assert "secretKeyRef" in _env(container)["POPSYNC_POSTGRES__DSN"]["valueFrom"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backfill_reads_archives_read_only_on_its_cpus_and_parks_on_the_topic(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kustomize(overlay)
    pod = job_spec(job_templates(docs)["backfill"])["template"]["spec"]
    (container,) = pod["containers"]
    args = cli.build_parser().parse_args(container["args"])
    # Dead letters to the topic (`popsync dlq`), never to a file of the pod; no progress
    # bar in a log.
    assert args.dead_letters is None
    assert args.no_progress is True
    # One part per CPU it is given, and given them for sure (requests equal to limits).
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert _cpus(resources["limits"]["cpu"]) == args.jobs == 2
    assert _mebibytes(resources["limits"]["memory"]) > BACKFILL_RSS_GOAL_MIB
    # The archives: the claim, mounted read-only (and attached so); every FILE is on it.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (mount,) = [
        m for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]
    ]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": ARCHIVES_CLAIM, "readOnly": True}
    assert mount["readOnly"] is True
    assert args.files
    assert all(name.startswith(mount["mountPath"] + "/") for name in args.files)
    # Every other volume is scratch space.
    assert all("emptyDir" in v for name, v in volumes.items() if name != mount["name"])
    # Its dead letters and notices go to the topics the workers use.
    topics = container_settings(docs, container, monkeypatch).topics
    for name, settings in k8s_worker_settings(docs, monkeypatch).items():
        assert settings.topics == topics, f"{overlay}: {name} and the backfill part"


def test_k8s_audit_key_is_never_a_literal() -> None:
    for path in k8s_files():
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        for node in walk(docs):
            if node.get("name") == "POPSYNC_SERVE__AUDIT_KEY":
                assert "value" not in node, path
                assert "secretKeyRef" in node["valueFrom"], path


# --- transport security (Transport security in the deployment files agrees with the topology.) ---

ROLES_SQL = REPO / "deploy" / "postgres" / "roles.sql"
KAFKA_USERS = REPO / "deploy" / "compose" / "kafka-users.sh"
WORKER_USERS = {w.name: w.sasl_username for w in WORKERS}


def test_every_acl_principal_is_in_the_topology_or_the_directory() -> None:
    publishers = ("civil-status-79",)
    declared = {w.principal for w in WORKERS} | {e.principal for e in EXTERNAL_PRINCIPALS}
    declared |= {j.principal for j in JOBS}
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
    popsync_users |= {j.sasl_username for j in JOBS}
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
    expected = {
        role: {privileges: set(tables) for privileges, tables in by_privileges.items()}
        for role, by_privileges in database_grants().items()
    }
    assert set(grants) == {w.database_role for w in WORKERS} | {
        s.database_role for s in HTTP_SERVICES
    } | {j.database_role for j in JOBS}
    assert grants == expected
    assert "CREATE" not in {p for g in grants.values() for p in g}


def _tables_with_sequences() -> set[str]:
    sql = (REPO / "popsync" / "adapters" / "postgres" / "schema.sql").read_text(encoding="utf-8")
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", sql, re.DOTALL)
    return {name for name, body in tables if re.search(r"serial|GENERATED", body, re.I)}


def test_postgres_roles_create_only_in_a_schema_of_their_own() -> None:
    """No role may create in public (an object planted there could be picked up by another
    role's queries); a job that makes tables makes them in the schema named for its role,
    which "$user" puts first on its search_path."""
    sql = ROLES_SQL.read_text(encoding="utf-8")
    schema_grants = re.findall(r"^GRANT ([A-Z, ]+) ON SCHEMA (\w+) TO (\w+);$", sql, re.M)
    assert {p for p, schema, _ in schema_grants if schema == "public"} == {"USAGE"}
    creators = {(schema, role) for p, schema, role in schema_grants if "CREATE" in p}
    assert creators == {(schema, role) for role, schema in scratch_schemas().items()}
    for role, schema in scratch_schemas().items():
        assert f"CREATE SCHEMA IF NOT EXISTS {schema};" in sql, role
        assert f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;" in sql, role
        assert f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role};" in sql, role
        assert schema == role
        assert f'ALTER ROLE {role} SET search_path = "$user", public;' in sql, role
    # A job's tables have no sequence: it is granted none.
    for job in JOBS:
        assert not set(job.tables) & _tables_with_sequences(), job.name
        assert f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {job.database_role};" in sql
        assert not re.search(rf"ON ALL SEQUENCES IN SCHEMA public TO {job.database_role}", sql)


def test_postgres_roles_log_in_with_their_own_password_and_nothing_else() -> None:
    sql = ROLES_SQL.read_text(encoding="utf-8")
    for role in database_grants():
        password = role.removeprefix("popsync_") + "_password"
        assert (
            f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'{password}';"
        ) in sql, role
        assert f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};" in sql, role
    # The service's role: no sequence (its tables have none), CONNECT only.
    for service in HTTP_SERVICES:
        assert f"GRANT CONNECT ON DATABASE popsync TO {service.database_role};" in sql
        assert not re.search(rf"ON ALL SEQUENCES IN SCHEMA public TO {service.database_role}", sql)


def test_nobody_may_change_an_append_only_table() -> None:
    """access_audit: INSERT for the service, never UPDATE, DELETE or TRUNCATE for any role,
    and the owner, who runs roles.sql, gives those up too (the trigger refuses them anyway)."""
    sql = ROLES_SQL.read_text(encoding="utf-8")
    assert not re.search(r"^GRANT ALL\b", sql, re.MULTILINE)
    for table in APPEND_ONLY_TABLES:
        granted = [
            privileges
            for by_privileges in _grants(sql).values()
            for privileges, tables in by_privileges.items()
            if table in tables
        ]
        assert granted, f"{table}: nobody may write it"
        for privileges in granted:
            assert not {"UPDATE", "DELETE", "TRUNCATE"} & set(privileges.split(", ")), table
        assert f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM PUBLIC, CURRENT_USER;" in sql, (
            table
        )


def test_compose_passes_every_role_its_password() -> None:
    """Each psql variable roles.sql reads is set by the compose script from a variable the
    postgres-roles service defines."""
    used = set(re.findall(r":'(\w+_password)'", ROLES_SQL.read_text(encoding="utf-8")))
    assert used == {role.removeprefix("popsync_") + "_password" for role in database_grants()}
    script = (REPO / "deploy" / "compose" / "postgres-roles.sh").read_text(encoding="utf-8")
    passed = dict(re.findall(r'-v (\w+)="\$(\w+)"', script))
    assert set(passed) == used
    env = env_mapping(compose()["services"]["postgres-roles"]["environment"])
    assert set(passed.values()) <= set(env)
    assert all(env[name].startswith("${") for name in passed.values()), "a literal password"


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


def test_production_http_services_use_their_own_role_and_secrets(
    production: list[dict[str, Any]],
) -> None:
    autoscalers = by_component(production, "HorizontalPodAutoscaler")
    for name, deployment in service_deployments(production).items():
        # The autoscaler owns the count: a count in the manifest would reset it on apply.
        assert "replicas" not in deployment["spec"], name
        assert autoscalers[name]["spec"]["minReplicas"] >= 3, name
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = _env(container)
        assert env["POPSYNC_POSTGRES__DSN"]["valueFrom"]["secretKeyRef"] == {
            "name": "popsync-postgres",
            "key": f"dsn-{name}",
        }
        assert (
            env["POPSYNC_SERVE__AUDIT_KEY"]["valueFrom"]["secretKeyRef"]["name"]
            == (deployment["metadata"]["name"])
        )
        assert not [k for k in env if k.startswith("POPSYNC_KAFKA__")], f"{name}: no Kafka"


def test_production_jobs_use_their_own_principal_role_and_secrets(
    production: list[dict[str, Any]],
) -> None:
    for name, cron in job_templates(production).items():
        (container,) = job_spec(cron)["template"]["spec"]["containers"]
        env = _env(container)
        job = next(j for j in JOBS if j.name == name)
        assert env["POPSYNC_KAFKA__SASL_USERNAME"]["value"] == job.sasl_username
        assert env["POPSYNC_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": f"popsync-kafka-{name}",
            "key": "password",
        }
        assert env["POPSYNC_POSTGRES__DSN"]["valueFrom"]["secretKeyRef"] == {
            "name": "popsync-postgres",
            "key": f"dsn-{name}",
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
