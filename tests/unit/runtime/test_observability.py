"""The worker's endpoint without a broker: probes, lag, freshness, latency, the HTTP server."""

from __future__ import annotations

import asyncio
import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from fastavro import schemaless_writer
from prometheus_client import REGISTRY

from popsync.contract import models as m
from popsync.contract.codec import MAGIC, Codec, to_avro_datum
from popsync.contract.schemas import earlier_versions
from popsync.domain.rules import check_event
from popsync.runtime import observability
from popsync.runtime.observability import Endpoint, Health, Verdict, readiness
from tests.builders import birth_event


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# --- readiness and liveness -------------------------------------------------------------


@pytest.mark.parametrize(
    ("lags", "draining", "ok", "reason"),
    [
        ({}, False, False, "no partitions assigned"),
        ({("t", 0): 0, ("t", 1): None}, False, False, "not yet known for 1 of 2"),
        ({("t", 0): 6, ("t", 1): 5}, False, False, "lag 11 > 10"),
        ({("t", 0): 6, ("t", 1): 4}, False, True, "ready: 2 partitions, lag 10"),
        ({("t", 0): 0}, True, False, "draining"),
    ],
)
def test_readiness(
    lags: dict[tuple[str, int], int | None], draining: bool, ok: bool, reason: str
) -> None:
    verdict = readiness(lags, max_lag=10, draining=draining)
    assert verdict.ok is ok
    assert reason in verdict.reason


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_from_start_to_stop() -> None:
    clock = Clock()
    health = Health("unit-health", ready_max_lag=5, clock=clock, stale_after=30)
    # Started, not yet in the group: alive (the group join may take a while), not ready.
    assert health.liveness() == Verdict(True, "starting")
    assert not health.readiness().ok
    assert sample("popsync_worker_up", worker="unit-health") == 1
    assert sample("popsync_worker_ready", worker="unit-health") == 0

    health.beat({("t", 0): 3})
    assert health.liveness() == Verdict(True, "alive")
    assert health.readiness().ok
    assert sample("popsync_worker_ready", worker="unit-health") == 1

    health.beat({("t", 0): 6})  # fell behind
    assert not health.readiness().ok

    health.beat({("t", 0): 0}, draining=True)
    assert health.liveness().ok  # a draining worker must not be killed
    assert health.readiness().reason.startswith("draining")

    clock.now += 31  # the consumer loop stopped turning
    assert health.liveness() == Verdict(False, "consumer loop silent for 31s")
    assert not health.readiness().ok
    assert sample("popsync_worker_up", worker="unit-health") == 0

    health.beat({("t", 0): 0})
    assert health.liveness().ok
    health.stopped()
    assert health.liveness() == Verdict(False, "stopped")
    assert sample("popsync_worker_up", worker="unit-health") == 0


# --- lag --------------------------------------------------------------------------------


class TP(NamedTuple):
    topic: str
    partition: int


@dataclass
class FakeConsumer:
    """faust's consumer as `partition_lags` uses it."""

    high: dict[TP, int | None] = field(default_factory=dict)
    _read_offset: dict[TP, int] = field(default_factory=dict)
    positions: dict[TP, int] = field(default_factory=dict)  # the Kafka client's, in memory
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)
    revoked: set[TP] = field(default_factory=set)
    started: bool = True

    def assignment(self) -> set[TP]:
        if not self.started:
            raise RuntimeError("Consumer thread not yet started")
        return set(self.high)

    @property
    def _thread(self) -> SimpleNamespace:
        """faust's consumer thread, down to aiokafka's partition states."""

        def state_value(tp: TP) -> SimpleNamespace | None:
            known = tp in self.positions
            return SimpleNamespace(has_valid_position=known, position=self.positions.get(tp))

        assignment = SimpleNamespace(state_value=state_value)
        subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        return SimpleNamespace(_consumer=SimpleNamespace(_subscription=subscription))

    def highwater(self, tp: TP) -> int | None:
        assert tp not in self.revoked, "Partition is not assigned"
        return self.high[tp]


def test_lag_is_high_water_mark_minus_the_next_offset_to_process() -> None:
    a, b, c, d, e, f, g = (TP("t", p) for p in range(7))
    consumer = FakeConsumer(
        high={a: 100, b: 100, c: 100, d: None, e: 100, f: 100, g: 100},
        positions={g: 80},
        _read_offset={c: 99},  # taken, but nothing processed or committed: see below
        _committed_offset={a: 40, b: 90, c: None},
        revoked={e},
    )
    durable = {("t", 0): 70, ("t", 1): 60}
    lags = observability.partition_lags(consumer, durable)
    assert lags == {
        ("t", 0): 30,  # the last durable batch is ahead of the last commit
        ("t", 1): 10,  # the group's commit (another member's work) is ahead
        ("t", 2): 0,  # neither known (a new group): the last message faust took
        ("t", 3): None,  # no fetch response yet
        ("t", 5): None,  # nothing taken, processed or committed yet: unknown
        ("t", 6): 20,  # nothing taken yet: where the client will fetch from
    }
    assert observability.partition_lags(FakeConsumer(started=False), {}) == {}


def test_lag_gauges_follow_the_assignment() -> None:
    worker = "unit-lag"
    observability.publish_lags(worker, {("t", 0): 5, ("t", 1): 0, ("t", 2): None})
    assert sample("popsync_consumer_lag_messages", worker=worker, topic="t", partition="0") == 5
    assert sample("popsync_consumer_lag_messages", worker=worker, topic="t", partition="1") == 0
    assert sample("popsync_consumer_lag_messages", worker=worker, topic="t", partition="2") is None
    observability.publish_lags(worker, {("t", 1): 2}, previous=[("t", 0), ("t", 1), ("t", 2)])
    assert sample("popsync_consumer_lag_messages", worker=worker, topic="t", partition="0") is None
    assert sample("popsync_consumer_lag_messages", worker=worker, topic="t", partition="1") == 2


def test_watch_beats_and_survives_a_failing_consumer() -> None:
    class App:
        consumer: Any = FakeConsumer(high={TP("t", 0): 10}, _committed_offset={TP("t", 0): 10})

    class Broken:
        def assignment(self) -> set[TP]:
            return {TP("t", 0)}

        def highwater(self, tp: TP) -> int:
            raise ValueError("boom")

    health = Health("unit-watch", ready_max_lag=0)

    async def scenario() -> None:
        task = asyncio.ensure_future(
            observability.watch(App(), health, dict, lambda: False, interval=0.01)
        )
        await asyncio.sleep(0.05)
        assert health.readiness() == Verdict(True, "ready: 1 partitions, lag 0")
        App.consumer = Broken()
        await asyncio.sleep(0.05)
        assert not task.done()
        assert health.liveness().ok  # the loop still turns
        task.cancel()

    asyncio.run(scenario())


# --- freshness and event-to-store latency -----------------------------------------------


def test_freshness_is_the_newest_recorded_at_per_source_and_current_province() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    # A legacy source province (35, Hà Nam) is mapped by the validator to 37 (Ninh Bình).
    legacy = check_event(
        birth_event(source_province="35", recorded_at=at),
        b"079203000123",
        datetime(2026, 11, 23, tzinfo=UTC),
        timedelta(minutes=5),
    )
    older = legacy.model_copy(update={"recorded_at": at - timedelta(days=1)})
    freshness = observability.Freshness()
    freshness.record([legacy, older])
    labels = {"source_registry": "CIVIL_STATUS", "province": "37"}
    assert sample("popsync_last_event_recorded_timestamp_seconds", **labels) == at.timestamp()
    freshness.record([older])  # a late event does not move it back
    assert sample("popsync_last_event_recorded_timestamp_seconds", **labels) == at.timestamp()
    assert (
        sample(
            "popsync_last_event_recorded_timestamp_seconds",
            source_registry="CIVIL_STATUS",
            province="35",
        )
        is None
    )


def citizen_update(recorded_at: datetime | None) -> m.CitizenUpdate:
    return m.CitizenUpdate(
        pin="079203000123",
        version=1,
        snapshot=m.CitizenSnapshot(pin="079203000123", full_name="Nguyễn Văn An"),
        changed_fields=["full_name"],
        event_id="e-1",
        event_type=m.EventType.BIRTH_REGISTERED,
        source_registry=m.SourceRegistry.ID_CARD,
        occurred_at=datetime(2003, 1, 2, tzinfo=UTC),
        applied_at=datetime(2026, 1, 1, tzinfo=UTC),
        recorded_at=recorded_at,
    )


def test_event_to_store_latency_counts_written_updates_only() -> None:
    name = "popsync_event_to_store_seconds"
    labels = {"source_registry": "ID_CARD"}
    before = sample(f"{name}_count", **labels) or 0
    before_sum = sample(f"{name}_sum", **labels) or 0
    committed = datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    conflict = m.MergeConflict(
        pin="079203000123",
        event_id="e-2",
        event_type=m.EventType.BIRTH_REGISTERED,
        source_registry=m.SourceRegistry.ID_CARD,
        conflict_code="NOT_AUTHORITATIVE",
        message="m",
        resolved=False,
        occurred_at=committed,
        detected_at=committed,
    )
    updates = [citizen_update(datetime(2026, 1, 1, tzinfo=UTC)), citizen_update(None), conflict]
    observability.observe_event_to_store(updates, committed)
    assert sample(f"{name}_count", **labels) == before + 1
    assert sample(f"{name}_sum", **labels) == pytest.approx(before_sum + 3)


def test_an_update_written_before_recorded_at_existed_is_still_read() -> None:
    codec = Codec(m.CitizenUpdate)
    v1, v2 = earlier_versions("CitizenUpdate")  # v2: before publisher_id and key_id
    assert v1.fingerprint.hex() == "3f8a6e8602362c5c"  # CitizenUpdate as first released
    assert "publisher_id" not in {f["name"] for f in v2.parsed["fields"]}
    datum = to_avro_datum(citizen_update(None))
    del datum["recorded_at"]
    buffer = io.BytesIO()
    buffer.write(MAGIC + v1.fingerprint)
    schemaless_writer(buffer, v1.parsed, datum)
    decoded = codec.decode(buffer.getvalue())
    assert decoded == citizen_update(None)
    now = citizen_update(datetime(2026, 1, 1, tzinfo=UTC))
    assert codec.decode(codec.encode(now)) == now


# --- the HTTP endpoint ------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, Health]]:
    health = Health("unit-http", ready_max_lag=0)
    server = Endpoint("127.0.0.1", 0, health).start()
    try:
        yield server, health
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local http
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_endpoint_serves_metrics_and_probes(endpoint: tuple[Endpoint, Health]) -> None:
    server, health = endpoint
    base = f"http://127.0.0.1:{server.port}"
    assert server.port > 0  # port 0: a free one, reported
    assert get(f"{base}/healthz")[::2] == (200, "starting\n")
    assert get(f"{base}/readyz")[::2] == (503, "starting: not in the consumer group yet\n")
    health.beat({("t", 0): 0})
    assert get(f"{base}/readyz")[::2] == (200, "ready: 1 partitions, lag 0\n")
    health.beat({("t", 0): 1})
    assert get(f"{base}/readyz")[::2] == (503, "lag 1 > 0 messages\n")
    status, content_type, text = get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert 'popsync_worker_ready{worker="unit-http"} 0.0' in text
    assert get(f"{base}/elsewhere")[0] == 404


def test_endpoint_port_in_use_fails_loudly(endpoint: tuple[Endpoint, Health]) -> None:
    server, health = endpoint
    with pytest.raises(OSError):
        Endpoint("127.0.0.1", server.port, health)


def test_an_update_written_before_signatures_is_read_without_a_publisher() -> None:
    codec = Codec(m.CitizenUpdate)
    _, v2 = earlier_versions("CitizenUpdate")
    datum = to_avro_datum(citizen_update(datetime(2026, 1, 1, tzinfo=UTC)))
    del datum["publisher_id"], datum["key_id"]
    buffer = io.BytesIO()
    buffer.write(MAGIC + v2.fingerprint)
    schemaless_writer(buffer, v2.parsed, datum)
    decoded = codec.decode(buffer.getvalue())
    assert decoded == citizen_update(datetime(2026, 1, 1, tzinfo=UTC))
    assert (decoded.publisher_id, decoded.key_id) == (None, None)
    signed = citizen_update(None).model_copy(
        update={"publisher_id": "dev-id-card", "key_id": "dev-id-card-k1"}
    )
    assert codec.decode(codec.encode(signed)) == signed
