"""Settings: one source, reproducible in a worker process through the environment."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from popsync.dev.stack import settings_env
from popsync.runtime.app import faust_credentials
from popsync.settings import KafkaSettings, Settings


def test_settings_survive_the_trip_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(
        kafka={
            "bootstrap_servers": "k1:9092,k2:9092",
            "session_timeout_ms": 6000,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "popsync",
            "sasl_password": "s3cret",
        },
        postgres={"dsn": "postgresql://u:p@db/popsync"},
        topics={"partitions": 12},
    )
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_secrets_are_not_shown() -> None:
    settings = Settings(postgres={"dsn": "postgresql://u:p4ss@db/popsync"})
    assert "p4ss" not in repr(settings)


def test_librdkafka_config_carries_security() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password=SecretStr("p"),
    )
    config = kafka.librdkafka()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "p"


def test_faust_gets_the_same_security() -> None:
    assert faust_credentials(KafkaSettings()) is None
    sasl = faust_credentials(
        KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_username="u",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_password=SecretStr("p"),
        )
    )
    assert sasl.username == "u"
    assert sasl.ssl_context is not None
