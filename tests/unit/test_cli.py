"""The command line: help with defaults and an example per command; every failure one line
(one per bad setting) on stderr with its documented exit code, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from popsync import cli, topology
from popsync.adapters.kafka.admin import BrokerUnreachable, PartitionCountMismatchError
from popsync.adapters.kafka.logs import CLIENT_LOGGER
from popsync.adapters.kafka.producer import DeliveryFailed
from popsync.adapters.kafka.reader import TopicMissing, TopicReadError
from popsync.adapters.postgres.database import DatabaseUnreachable, dsn_address
from popsync.ops import failures
from popsync.settings import SettingsError


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's path and parser, `bench` (the harness's own help) aside."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name != "bench":
                    yield from commands(sub, (*path, name))


COMMANDS = dict(commands(cli.build_parser()))


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "popsync")
def test_every_command_help_has_an_example(path: tuple[str, ...]) -> None:
    text = COMMANDS[path].format_help()
    assert "example:\n  " in text
    example = text.split("example:\n", 1)[1]
    assert f"popsync {' '.join(path)}".strip() in example


def test_help_shows_defaults_and_choices() -> None:
    assert "(default: 60" in COMMANDS[("dlq", "list")].format_help()
    assert "(default: text)" in COMMANDS[("topology",)].format_help()
    worker = COMMANDS[("worker",)].format_help()
    assert "{validator,synchronizer}" in worker
    assert "civil-status" in COMMANDS[("publish",)].format_help()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No POPSYNC_* variable of the shell running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("POPSYNC_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_bad_settings_are_one_line_each_and_exit_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("POPSYNC_PROCESSING__BATCH_SIZE", "0")
    clean_env.setenv("POPSYNC_PROCESSING__FUTURE_SKEW_SECONDS", "soon")
    assert cli.main(["topology"]) == failures.EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        "popsync: POPSYNC_PROCESSING__BATCH_SIZE: Input should be greater than or equal to 1 "
        "(got '0')",
        "popsync: POPSYNC_PROCESSING__FUTURE_SKEW_SECONDS: Input should be a valid integer, "
        "unable to parse string as an integer (got 'soon')",
    ]


def test_an_unknown_variable_is_refused_with_the_closest_name(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("POPSYNC_KAFKA__BOOTSTRAP_SERVER", "kafka:9092")
    assert cli.main(["db", "migrate"]) == failures.EXIT_USAGE
    assert capsys.readouterr().err == (
        "popsync: POPSYNC_KAFKA__BOOTSTRAP_SERVER: not a popsync setting; "
        "did you mean POPSYNC_KAFKA__BOOTSTRAP_SERVERS?\n"
    )


def test_an_unreadable_input_file_is_a_usage_error(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jsonl"
    assert cli.main(["publish", "--source", "civil-status", str(missing)]) == 2
    assert capsys.readouterr().err == f"popsync: cannot read {missing}: No such file or directory\n"


def test_an_unforeseen_error_is_one_line_exit_70_traceback_only_at_debug(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_: object) -> str:
        raise ZeroDivisionError("079203000123")

    clean_env.setattr(topology, "describe", broken)
    assert cli.main(["topology"]) == failures.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err == (
        "popsync: internal error (ZeroDivisionError); "
        "rerun with POPSYNC_LOG_LEVEL=DEBUG for details\n"
    )
    assert not [r for r in caplog.records if r.exc_info]

    clean_env.setenv("POPSYNC_LOG_LEVEL", "DEBUG")
    with caplog.at_level(logging.DEBUG, logger="popsync.cli"):
        assert cli.main(["topology"]) == failures.EXIT_INTERNAL
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ZeroDivisionError]


def test_librdkafka_is_quiet_unless_debug(clean_env: pytest.MonkeyPatch) -> None:
    cli.main(["topology"])
    assert CLIENT_LOGGER.getEffectiveLevel() == logging.CRITICAL
    clean_env.setenv("POPSYNC_LOG_LEVEL", "DEBUG")
    cli.main(["topology"])
    assert CLIENT_LOGGER.getEffectiveLevel() == logging.DEBUG


@pytest.mark.parametrize(
    ("error", "line", "code"),
    [
        (
            BrokerUnreachable("127.0.0.1:9", 5, "_TRANSPORT"),
            "cannot reach the Kafka broker at 127.0.0.1:9 (POPSYNC_KAFKA__BOOTSTRAP_SERVERS) "
            "within 5 s",
            3,
        ),
        (
            BrokerUnreachable("k:9093", 5, "SASL_AUTHENTICATION_FAILED"),
            "cannot reach the Kafka broker at k:9093 (POPSYNC_KAFKA__BOOTSTRAP_SERVERS) "
            "within 5 s: SASL_AUTHENTICATION_FAILED",
            3,
        ),
        (
            DatabaseUnreachable("db:5432/popsync", 5, "Connection refused"),
            "cannot reach PostgreSQL at db:5432/popsync (POPSYNC_POSTGRES__DSN) within 5 s: "
            "Connection refused",
            3,
        ),
        (SettingsError(["POPSYNC_A: x", "POPSYNC_B: y"]), "POPSYNC_A: x", 2),
        (failures.UsageError("cannot read f"), "cannot read f", 2),
        (TopicMissing("topic t does not exist"), "topic t does not exist: create the topics", 2),
        (PartitionCountMismatchError("t has 4 partitions"), "t has 4 partitions", 2),
        (TopicReadError("the end of t was not reached"), "the end of t was not reached", 3),
        (DeliveryFailed("3 undelivered"), "the Kafka broker did not confirm", 3),
        (KeyError("079203000123"), "internal error (KeyError); rerun with", 70),
    ],
)
def test_each_known_failure_has_its_line_and_exit_code(
    error: Exception, line: str, code: int
) -> None:
    failure = failures.describe(error)
    assert failure.lines[0].startswith(line)
    assert failure.exit_code == code
    assert "079203000123" not in " ".join(failure.lines)


def test_a_dsn_is_shown_without_its_password() -> None:
    assert dsn_address("postgresql://popsync:s3cret@db:6432/central") == "db:6432/central"
    assert dsn_address("host=/run/pg dbname=x password=s3cret") == "/run/pg:5432/x"


def test_dead_letters_are_selected_by_registry_source_or_unidentified() -> None:
    parse = cli.build_parser().parse_args
    args = parse(["dlq", "list", "--source", "civil-status", "--source", "CIVIL_STATUS/079"])
    assert cli._dlq_selection(args).sources == {"CIVIL_STATUS", "CIVIL_STATUS/79"}
    args = parse(["dlq", "replay", "--source", "unidentified", "--source", "residence/?"])
    assert cli._dlq_selection(args).sources == {"unidentified", "RESIDENCE/?"}
