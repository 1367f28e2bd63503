"""A real Prometheus server scraping local workers, for `popsync demo --with-prometheus`
and the integration tests.

It runs the `prometheus` binary found on PATH (Debian: `apt-get install prometheus`; the
package's own service is not used) as a subprocess on 127.0.0.1 with a generated
configuration: one job, `popsync`, whose targets are the workers' HTTP endpoints, each
with a `worker` label, listed in a file (`file_sd`) that is rewritten whenever workers
come and go. `honor_labels` keeps a metric's own `worker` label where it has one. The
production scrape configuration is a different file, under `deploy/prometheus/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["EmbeddedPrometheus", "PrometheusStartError", "prometheus_binary"]

from popsync.dev.embedded._service import EmbeddedService, log_tail

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
JOB = "popsync"

Target = tuple[str, str]  # (worker name, host:port)


class PrometheusStartError(RuntimeError):
    """Prometheus did not come up; the message carries the tail of its log."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def prometheus_binary() -> str | None:
    """The `prometheus` executable on PATH, if any."""
    return shutil.which("prometheus")


def scrape_config(targets_file: Path, interval: float) -> dict[str, Any]:
    """The configuration (JSON is YAML) of one job scraping every listed worker."""
    seconds = f"{interval:g}s"
    return {
        "global": {"scrape_interval": seconds, "evaluation_interval": seconds},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": seconds,
                "scrape_timeout": seconds,
                "metrics_path": "/metrics",
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
            }
        ],
    }


def target_groups(targets: Iterable[Target]) -> list[dict[str, Any]]:
    """file_sd groups: the targets of each worker name, labelled with it."""
    by_worker: dict[str, list[str]] = {}
    for worker, address in targets:
        by_worker.setdefault(worker, []).append(address)
    return [
        {"targets": addresses, "labels": {"worker": worker}}
        for worker, addresses in sorted(by_worker.items())
    ]


class EmbeddedPrometheus(EmbeddedService):
    """One Prometheus process on 127.0.0.1 scraping `targets`, for this object's lifetime."""

    def __init__(
        self,
        workdir: Path,
        targets: Iterable[Target] = (),
        *,
        port: int | None = None,
        scrape_interval: float = 1.0,
        binary: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else _free_port()
        self._binary = binary or prometheus_binary()
        self._interval = scrape_interval
        self._start_timeout = start_timeout
        self._targets = list(targets)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def targets_path(self) -> Path:
        return self.workdir / "targets.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running and self._process else None

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Replace the scraped workers; Prometheus picks the file up within seconds."""
        self._targets = list(targets)
        self.workdir.mkdir(parents=True, exist_ok=True)
        partial = self.targets_path.with_suffix(".tmp")
        partial.write_text(json.dumps(target_groups(self._targets), indent=2), encoding="utf-8")
        os.replace(partial, self.targets_path)  # never a half-written file

    def start(self) -> None:
        """Write the configuration, launch Prometheus and return once `/-/ready` says so."""
        if self.is_running:
            return
        if self._binary is None:
            raise PrometheusStartError(
                "no `prometheus` on PATH (Debian: apt-get install -y prometheus)"
            )
        self.set_targets(self._targets)
        config = scrape_config(self.targets_path, self._interval)
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        argv = [
            self._binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={_HOST}:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]
        self._log_file = self.log_path.open("ab")
        started = time.monotonic()
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops it in order
        )
        deadline = started + self._start_timeout
        while time.monotonic() < deadline:
            if not self.is_running:
                break
            if self._ready():
                _log.info("prometheus ready on %s in %.2fs", self.url, time.monotonic() - started)
                return
            time.sleep(0.1)
        tail = self._log_tail()
        self.stop()
        raise PrometheusStartError(f"prometheus did not start on {self.url}:\n{tail}")

    def stop(self, timeout: float = 10) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- HTTP API ----------------------------------------------------------------------

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}{path}{query}"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own http URL
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body.get('error', body)}")
        return body["data"]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        data = self._get("/api/v1/query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query's matrix: [{"metric": {...}, "values": [[t, "v"], ...]}, ...]."""
        data = self._get(
            "/api/v1/query_range", query=promql, start=str(start), end=str(end), step=str(step)
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of a query such as `sum(...)`; None if it has no result yet."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def active_targets(self) -> list[dict[str, Any]]:
        """Targets being scraped, each with `labels`, `health` ("up", "down", "unknown")."""
        data = self._get("/api/v1/targets", state="active")
        targets: list[dict[str, Any]] = data["activeTargets"]
        return targets

    def wait_for_targets_up(self, count: int, timeout: float) -> bool:
        """True once `count` targets of the job are scraped and up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = [
                t
                for t in self.active_targets()
                if t["labels"].get("job") == JOB and t["health"] == "up"
            ]
            if len(up) >= count:
                return True
            time.sleep(0.5)
        return False

    def _log_tail(self) -> str:
        return log_tail(self.log_path, "prometheus")
