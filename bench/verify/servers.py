"""The HTTP contenders as processes: the baseline (`bench.verify.baseline`) and the
service (`popsync serve`, with a partner made by `popsync partners add`)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.verify.baseline import DSN_VARIABLE
from popsync.dev.embedded._service import log_tail
from popsync.dev.stack import LOCALHOST, free_port

PURPOSE = "BENCH"
_KEY = re.compile(r"api key:\s*(psk_[0-9a-f]{12}\.[A-Za-z0-9_-]{43})")
_READY_TIMEOUT = 60.0


class ServerFailed(RuntimeError):
    """A contender did not start, or a CLI step it needs failed; with its log's tail."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> float:
        """Seconds until GET /readyz answered 200."""
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                    f"{log_tail(self.log_path, self.name)}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return round(time.monotonic() - started, 2)
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > timeout:
                raise ServerFailed(
                    f"{self.name} not ready after {timeout:.0f} s:\n"
                    f"{log_tail(self.log_path, self.name)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the harness, which stops it
        )


def start_baseline(dsn: str, workers: int, logs: Path) -> Server:
    port = free_port()
    name = f"baseline-x{workers}"
    env = {**os.environ, DSN_VARIABLE: dsn}
    argv = [sys.executable, "-m", "bench.verify.baseline", "--port", str(port)]
    argv += ["--workers", str(workers)]
    log_path = logs / f"{name}.log"
    return Server(name, _spawn(argv, env, log_path), port, log_path)


# ------------------------------------------------------------------------- the service


def popsync_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "popsync", *args]


def service_missing(env: dict[str, str]) -> str | None:
    """Why `popsync serve` and `popsync partners` cannot be used here, or None."""
    for command in (("serve", "--help"), ("partners", "add", "--help")):
        done = subprocess.run(  # noqa: S603
            popsync_command(*command), env=env, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            error = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            return (
                f"`popsync {' '.join(command)}` failed: {error[-1] if error else done.returncode}"
            )
    return None


def service_env(dsn: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment `popsync serve` and the partners CLI run with."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("POPSYNC_")}
    env |= {
        "POPSYNC_POSTGRES__DSN": dsn,
        "POPSYNC_SERVE__BIND_HOST": LOCALHOST,
        "POPSYNC_SERVE__AUDIT_KEY": secrets.token_urlsafe(32),
        # The load asks the same questions round and round (a small run, many times a
        # day's worth): the per-PIN guard still runs and costs what it costs, but must not
        # refuse them.
        "POPSYNC_SERVE__MAX_QUESTIONS_PER_PIN": str(10**9),
    }
    return env | extra


def add_partner(env: dict[str, str]) -> tuple[str, str]:
    """A new partner for this run (a cached database keeps earlier ones): its id and API
    key, as `popsync partners add` prints it."""
    partner = f"bench-{secrets.token_hex(4)}"
    argv = popsync_command(
        "partners", "add", partner, "--name", "Bench", "--purpose", PURPOSE,
        "--rate", "1000000", "--burst", "1000000", "--daily-quota", "1000000000",
        "--operator", "bench",
    )  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)  # noqa: S603
    output = done.stdout.decode(errors="replace")
    found = _KEY.search(output)
    if done.returncode != 0 or found is None:
        error = done.stderr.decode(errors="replace")
        raise ServerFailed(
            f"`popsync partners add` exited with {done.returncode} and printed no API key:\n"
            f"{error[-2000:]}"
        )
    return partner, found.group(1)


def start_service(env: dict[str, str], api_key: str, logs: Path) -> Server:
    port = free_port()
    env = env | {"POPSYNC_SERVE__PORT": str(port)}
    log_path = logs / "service.log"
    headers = {"Authorization": f"Bearer {api_key}", "X-Purpose": PURPOSE}
    return Server(
        "service", _spawn(popsync_command("serve"), env, log_path), port, log_path, headers
    )
