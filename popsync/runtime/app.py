"""A worker's faust app, from settings: its group, broker security, batching and topics."""

from __future__ import annotations

import ssl
from typing import Any

import faust

from popsync.runtime.consumer import BatchApp, Batching
from popsync.settings import KafkaSettings, Settings, WorkerName


def make_app(settings: Settings, worker: WorkerName) -> BatchApp:
    """A faust app for one worker kind; every instance of it joins one group."""
    app = BatchApp(
        settings.groups.for_worker(worker),
        batching=Batching(
            size=settings.processing.batch_size,
            window_seconds=settings.processing.batch_window_seconds,
        ),
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        broker=[f"kafka://{host}" for host in settings.kafka.bootstrap_servers.split(",")],
        broker_client_id=f"{settings.kafka.client_id}-{worker}",
        broker_credentials=faust_credentials(settings.kafka),
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.kafka.session_timeout_ms / 3000, 1.0),
        broker_max_poll_records=settings.kafka.max_poll_records,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        producer_acks=-1,
        # On a rebalance, let the batch in flight finish (and commit) before the
        # partitions go. On our own stop the drain has done that already and
        # turns this off (see DrainingWorker), since a held batch never acks.
        stream_wait_empty=True,
        store="memory://",
    )
    return app


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The same broker security for faust (aiokafka) as for confluent-kafka."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    tls = ssl.create_default_context() if kafka.security_protocol.endswith("SSL") else None
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=tls,
        )
    return faust.SSLCredentials(tls)


def raw_topic(app: faust.App, name: str) -> Any:
    """A topic read as bytes: decoding is the worker's job, so bad bytes reach it intact."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )
