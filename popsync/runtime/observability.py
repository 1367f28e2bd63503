"""Each worker's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) and what feeds it.

One small threaded HTTP server per worker process, started before faust and
independent of its event loop: a scrape or a probe is answered even while the loop
is busy, and a loop that has stopped turning shows as a failing `/healthz` rather
than as a hung request. faust's own web server stays off (`web_enabled=False`).

- `/metrics`: every metric of `popsync.runtime.metrics`, Prometheus text format.
- `/healthz`: 200 while the worker's consumer loop runs, i.e. the watch task on
  faust's loop has ticked within `STALE_AFTER_SECONDS`; 200 "starting" before it
  first ticks (joining the group may take a while); 503 once the worker stopped.
- `/readyz`: 200 when partitions are assigned, the high-water mark of each is known
  and the total lag is at most `ready_max_lag`; 503 with a short reason otherwise,
  and while draining on SIGTERM. (A group member left without partitions, e.g. more
  replicas than partitions, is never ready: it processes nothing.)

Lag of a partition = its high-water mark, as the last fetch response gave it
(never ListOffsets, whose "latest offset" is wrong on some brokers), minus the next
offset the worker has to process: the end of its last durable batch there, else the
group's committed offset, else (a partition with neither, e.g. a new group) the offset
after the last message faust has taken from it, else the Kafka client's fetch position.
All are read from memory: asking faust's consumer thread for the position may wait
without bound, and holds one of the few calls that thread runs at once. The watch task
refreshes it every `REFRESH_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from popsync.contract import models as m
from popsync.runtime import metrics

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # lag gauges and the liveness heartbeat
STALE_AFTER_SECONDS = 30.0  # no heartbeat for this long: the consumer loop is stuck

PartitionKey = tuple[str, int]  # (topic, partition)
Lags = Mapping[PartitionKey, int | None]  # None: no fetch response yet, lag unknown


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: ok (200) or not (503), and a short reason for people."""

    ok: bool
    reason: str


def readiness(lags: Lags, max_lag: int, draining: bool = False) -> Verdict:
    """Ready when partitions are assigned, every lag is known and their sum ≤ `max_lag`."""
    if draining:
        return Verdict(False, "draining: stopping after the batch in flight")
    if not lags:
        return Verdict(False, "no partitions assigned")
    unknown = sum(1 for lag in lags.values() if lag is None)
    if unknown:
        return Verdict(
            False, f"high-water mark not yet known for {unknown} of {len(lags)} partitions"
        )
    total = sum(lag or 0 for lag in lags.values())
    if total > max_lag:
        return Verdict(False, f"lag {total} > {max_lag} messages")
    return Verdict(True, f"ready: {len(lags)} partitions, lag {total}")


class Health:
    """What the probes answer; written by the watch task, read by the HTTP threads.

    Each update replaces one immutable snapshot, so a reader never sees half of one.
    """

    def __init__(
        self,
        worker: str,
        ready_max_lag: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        stale_after: float = STALE_AFTER_SECONDS,
    ) -> None:
        self.worker = worker
        self._max_lag = ready_max_lag
        self._clock = clock
        self._stale_after = stale_after
        self._beat: float | None = None  # None: not started yet
        self._stopped = False
        self._draining = False
        self._lags: Lags = {}
        metrics.WORKER_UP.labels(worker).set_function(lambda: float(self.liveness().ok))
        metrics.WORKER_READY.labels(worker).set_function(lambda: float(self.readiness().ok))

    def beat(self, lags: Lags, draining: bool = False) -> None:
        """The consumer loop is alive; these are its partitions' lags now."""
        self._lags = dict(lags)
        self._draining = draining
        self._beat = self._clock()

    def stopped(self) -> None:
        self._stopped = True

    @property
    def lags(self) -> Lags:
        return self._lags

    def liveness(self) -> Verdict:
        if self._stopped:
            return Verdict(False, "stopped")
        if self._beat is None:
            return Verdict(True, "starting")
        silent = self._clock() - self._beat
        if silent > self._stale_after:
            return Verdict(False, f"consumer loop silent for {silent:.0f}s")
        return Verdict(True, "alive")

    def readiness(self) -> Verdict:
        alive = self.liveness()
        if not alive.ok:
            return alive
        if self._beat is None:
            return Verdict(False, "starting: not in the consumer group yet")
        return readiness(self._lags, self._max_lag, self._draining)


# --- lag --------------------------------------------------------------------------------


def partition_lags(
    consumer: Any, durable: Mapping[PartitionKey, int]
) -> dict[PartitionKey, int | None]:
    """Lag of each assigned partition (see module doc); faust's consumer, not started: {}."""
    try:
        assigned = consumer.assignment()
    except Exception:  # ConsumerNotStarted, or a rebalance under way
        return {}
    # Set by faust at assignment (the group's committed offset) and at each commit.
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    # Set by faust's fetcher for each message it hands to the streams.
    taken: Mapping[Any, int | None] = getattr(consumer, "_read_offset", {})
    lags: dict[PartitionKey, int | None] = {}
    for tp in assigned:
        key = (tp.topic, tp.partition)
        try:
            high = consumer.highwater(tp)
        except AssertionError:  # revoked since `assignment()`
            continue
        if high is None:
            lags[key] = None
            continue
        done = max(durable.get(key, -1), committed.get(tp) or -1)
        if done < 0:
            last_taken = taken.get(tp)
            position = fetch_position(consumer, tp) if last_taken is None else last_taken + 1
            if position is None:
                lags[key] = None
                continue
            done = position
        lags[key] = max(high - done, 0)
    return lags


def fetch_position(consumer: Any, tp: Any) -> int | None:
    """The next offset the Kafka client (aiokafka, under faust's consumer thread) will fetch
    from `tp`, read from its memory; None while unknown."""
    try:
        client = consumer._thread._consumer
        state = client._subscription.subscription.assignment.state_value(tp)
    except Exception:  # another driver, not started, or revoked meanwhile
        return None
    if state is None or not state.has_valid_position:
        return None
    position: int = state.position
    return position


def publish_lags(worker: str, lags: Lags, previous: Iterable[PartitionKey] = ()) -> None:
    """Set the lag gauge of each partition; drop the series of partitions no longer held."""
    for (topic, partition), lag in lags.items():
        if lag is not None:
            metrics.CONSUMER_LAG.labels(worker, topic, str(partition)).set(lag)
    for topic, partition in set(previous) - set(lags):
        with contextlib.suppress(KeyError):  # never set: its lag was never known
            metrics.CONSUMER_LAG.remove(worker, topic, str(partition))


async def watch(
    app: Any,
    health: Health,
    durable: Callable[[], Mapping[PartitionKey, int]],
    draining: Callable[[], bool],
    interval: float = REFRESH_SECONDS,
) -> None:
    """On faust's loop until the worker stops: refresh lags, beat the health heart."""
    previous: Iterable[PartitionKey] = ()
    while True:
        try:
            lags = partition_lags(app.consumer, durable())
            publish_lags(health.worker, lags, previous)
            previous = list(lags)
        except Exception:  # never let metrics stop a worker; the probe will say so
            log.warning("could not refresh consumer lag", exc_info=True)
            lags = dict(health.lags)
        health.beat(lags, draining())
        await asyncio.sleep(interval)


# --- what the workers observe -----------------------------------------------------------


class Freshness:
    """Newest `recorded_at` per source registry and (current) province of validated events.

    Only ever moves forward, so an event that arrives late does not make a stream look
    stale. The validator has already mapped a legacy province code to the current one.
    """

    def __init__(self) -> None:
        self._newest: dict[tuple[str, str], float] = {}

    def record(self, events: Iterable[m.RegistryEvent]) -> None:
        for event in events:
            key = (event.source_registry.value, event.source_province)
            recorded = event.recorded_at.timestamp()
            if recorded > self._newest.get(key, float("-inf")):
                self._newest[key] = recorded
                metrics.LAST_EVENT_TIMESTAMP.labels(*key).set(recorded)


def observe_event_to_store(
    records: Iterable[m.CitizenUpdate | m.MergeConflict], committed_at: datetime
) -> None:
    """Event-to-store latency of the citizen updates a store transaction just committed."""
    for record in records:
        if isinstance(record, m.CitizenUpdate) and record.recorded_at is not None:
            seconds = (committed_at - record.recorded_at).total_seconds()
            metrics.EVENT_TO_STORE_SECONDS.labels(record.source_registry.value).observe(
                max(seconds, 0.0)
            )


# --- the HTTP endpoint ------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Scrapes and probes come every few seconds: not worth a log line each."""


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        return socket.AF_INET


class Endpoint:
    """The worker's HTTP server, in a daemon thread; port 0 picks a free port (`port`)."""

    def __init__(
        self, host: str, port: int, health: Health, registry: CollectorRegistry = REGISTRY
    ) -> None:
        self._health = health
        self._metrics = make_wsgi_app(registry)
        server_class = type("_Server", (_Server,), {"address_family": _family(host)})
        self._server: WSGIServer = make_server(
            host, port, self._app, server_class=server_class, handler_class=_QuietHandler
        )
        self.host = host
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="popsync-http", daemon=True
        )

    def start(self) -> Endpoint:
        self._thread.start()
        log.info(
            "metrics and probes on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port
        )
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            verdict = self._health.liveness()
        elif path == "/readyz":
            verdict = self._health.readiness()
        else:
            verdict = None
        status = (
            "404 Not Found"
            if verdict is None
            else ("200 OK" if verdict.ok else "503 Service Unavailable")
        )
        text = "not found: /metrics, /healthz, /readyz" if verdict is None else verdict.reason
        payload = f"{text}\n".encode()
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(payload)))],
        )
        return [payload]
