"""The deployment files agree with the code.

A misspelled top-level POPSYNC_* variable is silently ignored by pydantic-settings, and a
misspelled worker name only fails when the container starts, so both are checked here,
against docker-compose.yml and deploy/k8s/. Rendering the overlays needs kubectl.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from popsync.contract.schemas import SCHEMA_DIR_ENV
from popsync.runtime import STOP_MARGIN_SECONDS
from popsync.settings import WORKER_NAMES, Settings

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
# POPSYNC_* variables popsync reads outside Settings.
NON_SETTINGS_VARS = {SCHEMA_DIR_ENV}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl missing")


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


def kustomize(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


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
    names = [n for s in compose()["services"].values() for n in worker_names(s.get("command"))]
    assert sorted(names) == sorted(WORKER_NAMES)


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


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize(overlay)
    config = k8s_env([d for d in docs if d.get("kind") == "ConfigMap"])
    assert config, f"{overlay}: no POPSYNC_* ConfigMap"
    assert set(config) <= settings_env_names() | NON_SETTINGS_VARS
    settings_from(config, monkeypatch)  # values parse, nested names exist
    workers = [n for cmd in container_commands(docs) for n in worker_names(cmd)]
    assert sorted(workers) == sorted(WORKER_NAMES)


@needs_kubectl
def test_production_replicas_never_exceed_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize("production")
    settings = settings_from(
        k8s_env([d for d in docs if d.get("kind") == "ConfigMap"]), monkeypatch
    )
    assert settings.topics.replication_factor == 3
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    assert len(deployments) == len(WORKER_NAMES)
    for deployment in deployments:
        replicas = deployment["spec"].get("replicas", 1)
        assert replicas <= settings.topics.partitions, (
            f"{deployment['metadata']['name']}: {replicas} replicas > "
            f"{settings.topics.partitions} partitions; the extra consumers would sit idle"
        )


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
