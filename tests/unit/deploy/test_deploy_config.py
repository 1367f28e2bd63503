"""The deployment files agree with the code, and with their formats.

A misspelled top-level POPSYNC_* variable is silently ignored by pydantic-settings, and a
misspelled worker name only fails when the container starts, so both are checked here,
against docker-compose.yml and deploy/k8s/. The workers, the topics they consume and their
consumer groups are those of popsync.topology as each container's settings name them: one
Deployment and one compose service per worker, the init step creating the topics the
workers read, KEDA scaling each worker on exactly its own topics and group.

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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from popsync.contract.schemas import SCHEMA_DIR_ENV
from popsync.dev.embedded.postgres import SERVER_OPTIONS
from popsync.ops.acls import derive_acls
from popsync.runtime.drain import STOP_MARGIN_SECONDS
from popsync.settings import Settings, WorkerName
from popsync.topology import (
    ADMIN_USERNAME,
    DATABASE_READS,
    EXTERNAL_PRINCIPALS,
    WORKERS,
    consumed_topics,
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


def worker_deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    deployments = by_component(docs, "Deployment")
    assert sorted(deployments) == sorted(WORKER_NAMES)
    return deployments


def overlay_settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from(k8s_env(of_kind(docs, "ConfigMap")), monkeypatch)


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, container) of every Deployment's and Job's containers, init ones included."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield doc["kind"], container


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
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    selected = [
        s
        for s in of_kind(docs, "Service")
        if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
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
    (policy,) = of_kind(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert pods and all(
        selects(spec["podSelector"]["matchLabels"], pod["metadata"]["labels"]) for pod in pods
    )
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
    """SIGKILL must not come before the worker's own grace period and watchdog are over."""
    longest_drain = Settings().processing.shutdown_grace_seconds + STOP_MARGIN_SECONDS
    periods = [
        int(doc["terminationGracePeriodSeconds"])
        for path in k8s_files()
        for doc in walk(list(yaml.safe_load_all(path.read_text(encoding="utf-8"))))
        if "terminationGracePeriodSeconds" in doc
    ]
    assert len(periods) == len(WORKER_NAMES)
    assert min(periods) > longest_drain
    compose_grace = compose()["x-popsync-worker"]["stop_grace_period"]
    assert int(compose_grace.removesuffix("s")) > longest_drain


# --- transport security (Transport security in the deployment files agrees with the topology.) ---

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
