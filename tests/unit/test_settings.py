"""Settings: one source, reproducible in a worker process through the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from popsync.dev.stack import settings_env
from popsync.runtime.app import faust_credentials
from popsync.settings import (
    VARIABLES,
    KafkaSettings,
    Settings,
    SettingsError,
    load_settings,
    unknown_variables,
)


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


# ------------------------------------------------------------------ load_settings: the env


def test_load_settings_reads_what_settings_env_writes() -> None:
    original = Settings(
        kafka={"bootstrap_servers": "k1:9092", "sasl_password": "s3cret"},
        postgres={"dsn": "postgresql://u:p@db/popsync"},
        processing={"batch_size": 7},
    )
    assert load_settings(settings_env(original)) == original
    assert load_settings({}) == Settings()


def test_names_are_read_case_insensitively_as_pydantic_settings_does() -> None:
    assert load_settings({"popsync_processing__batch_size": "9"}).processing.batch_size == 9


@pytest.mark.parametrize(
    ("given", "closest"),
    [
        ("POPSYNC_PROCESING__BATCH_SIZE", "POPSYNC_PROCESSING__BATCH_SIZE"),
        ("POPSYNC_KAFKA__BOOTSTRAP_SERVER", "POPSYNC_KAFKA__BOOTSTRAP_SERVERS"),
        ("POPSYNC_POSTGRES__DNS", "POPSYNC_POSTGRES__DSN"),
    ],
)
def test_an_unknown_variable_is_refused_naming_the_closest_setting(
    given: str, closest: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({given: "1"})
    assert info.value.lines == (f"{given}: not a popsync setting; did you mean {closest}?",)


def test_an_unknown_variable_with_nothing_close_points_at_the_docs() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"POPSYNC_FOO": "1"})
    assert info.value.lines == ("POPSYNC_FOO: not a popsync setting; see docs/configuration.md",)


def test_each_invalid_value_is_one_line_naming_its_variable() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {
                "POPSYNC_PROCESSING__BATCH_SIZE": "0",
                "POPSYNC_LOG_LEVEL": "loud",
                "POPSYNC_MATCHING__REVIEW": "50",
            }
        )
    assert info.value.lines == (
        "POPSYNC_PROCESSING__BATCH_SIZE: Input should be greater than or equal to 1 (got '0')",
        "POPSYNC_MATCHING: Value error, review threshold must not exceed auto_link",
        "POPSYNC_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (got 'loud')",
    )


def test_a_section_that_is_not_json_is_one_line() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"POPSYNC_KAFKA": "{not json"})
    assert info.value.lines == ("POPSYNC_KAFKA: not a valid JSON object",)


def test_a_secret_value_is_never_repeated() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"POPSYNC_KAFKA__SASL_PASSWORD": "p4ssw0rd", "POPSYNC_KAFKA__LINGER_MS": "x"})
    assert "p4ssw0rd" not in str(info.value)
    with pytest.raises(SettingsError) as info:
        load_settings({"POPSYNC_POSTGRES__DSN": '["p4ssw0rd"]', "POPSYNC_KAFKA__LINGER_MS": "x"})
    assert "p4ssw0rd" not in str(info.value)
    with pytest.raises(SettingsError) as info:
        load_settings({"POPSYNC_POSTGRES": '{"dsn": 12345678}'})
    assert info.value.lines == (
        "POPSYNC_POSTGRES__DSN: Input should be a valid string (value hidden: a secret)",
    )


ROOT = Path(__file__).resolve().parents[2]
# Where the project itself sets POPSYNC_* variables.
# The tests of the check itself spell names wrong on purpose.
OWN_TESTS = ("test_settings", "test_cli")
PLACEHOLDERS = {"POPSYNC_X"}  # tests/unit/dev/test_playground.py: a name to quote, not set
SETTERS = ("tests", "popsync/dev", "deploy", "docker-compose.yml", ".ci", "bench", "Makefile")


def _variables_set_by_the_project() -> set[str]:
    names: set[str] = set()
    for setter in SETTERS:
        path = ROOT / setter
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if "__pycache__" in file.parts or file.name.startswith(OWN_TESTS):
                continue
            text = file.read_text(encoding="utf-8", errors="replace")
            # Whole names only: `POPSYNC_TOPICS__*` in prose is a family, not a variable.
            names |= set(re.findall(r"\bPOPSYNC_[A-Z0-9_]*[A-Z0-9]\b(?![*_])", text))
    return names


def test_every_variable_the_project_sets_is_accepted() -> None:
    names = _variables_set_by_the_project()
    assert {"POPSYNC_KAFKA__BOOTSTRAP_SERVERS", "POPSYNC_CI", "POPSYNC_LOG_LEVEL"} <= names
    assert unknown_variables(dict.fromkeys(names - PLACEHOLDERS, "x")) == []
    assert set(VARIABLES) >= {"POPSYNC_MATCHING__AUTO_LINK", "POPSYNC_DEAD_LETTER_LIMIT__WINDOW"}
