"""How a `popsync` command fails: each known error as one line, and its exit code.

The codes (docs/operations.md, "Command line: exit codes and errors"):

- 0: everything done;
- 1: done, but some input was refused (bad lines, replays not confirmed, ...);
- 2: usage or configuration: a bad option, setting or input file, a topic missing;
- 3: the broker or PostgreSQL could not be reached, or stopped answering;
- 70: an internal error (a bug): one line; the traceback only at POPSYNC_LOG_LEVEL=DEBUG;
- 130: interrupted (Ctrl-C).

A worker that stops on its own (drain, dead-letter limit) keeps its codes
(`popsync.runtime.exits`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import psycopg
from confluent_kafka import KafkaError, KafkaException

from popsync.adapters.kafka.admin import (
    BrokerUnreachable,
    PartitionCountMismatchError,
    TopicProvisioningError,
)
from popsync.adapters.kafka.producer import DeliveryFailed
from popsync.adapters.kafka.reader import TopicMissing, TopicReadError
from popsync.adapters.postgres.database import DatabaseUnreachable, DirectoryRefusal
from popsync.settings import SettingsError, env_name

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130

BROKER_SETTING = env_name("kafka", "bootstrap_servers")
DATABASE_SETTING = env_name("postgres", "dsn")
# librdkafka's names for "nobody answered": the message says so already.
_SILENT_DETAILS = frozenset({"_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN"})


class UsageError(Exception):
    """What the command was given cannot be used (an input file that cannot be read, ...)."""


def judged(action: Callable[[], int], err: TextIO, usage: tuple[type[Exception], ...] = ()) -> int:
    """Run an operator's directory command: an error of a `usage` type is a usage error
    (2); a DirectoryRefusal is one line on `err` and exit code 1."""
    try:
        return action()
    except usage as exc:
        raise UsageError(str(exc)) from None
    except DirectoryRefusal as exc:
        print(f"popsync: {exc}", file=err)
        return EXIT_REFUSED


@dataclass(frozen=True)
class Failure:
    lines: tuple[str, ...]
    exit_code: int
    internal: bool = False  # a bug: its traceback is worth logging (at DEBUG)


def describe(exc: BaseException) -> Failure:
    """The lines (without the `popsync: ` prefix) and exit code of a command's failure."""
    if isinstance(exc, SettingsError):
        return Failure(exc.lines, EXIT_USAGE)
    if isinstance(exc, UsageError):
        return Failure((str(exc),), EXIT_USAGE)
    if isinstance(exc, BrokerUnreachable):
        return _unreachable(_broker_line(exc))
    if isinstance(exc, DatabaseUnreachable):
        return _unreachable(
            f"cannot reach PostgreSQL at {exc.address} ({DATABASE_SETTING}) "
            f"within {exc.waited:g} s: {exc.detail}"
        )
    return _broker_failure(exc) or _database_failure(exc) or _internal(exc)


def _unreachable(line: str) -> Failure:
    return Failure((line,), EXIT_UNREACHABLE)


def _broker_line(exc: BrokerUnreachable) -> str:
    line = (
        f"cannot reach the Kafka broker at {exc.servers} ({BROKER_SETTING}) within {exc.waited:g} s"
    )
    return line if exc.detail in _SILENT_DETAILS else f"{line}: {exc.detail}"


def _broker_failure(exc: BaseException) -> Failure | None:
    if isinstance(exc, TopicMissing):
        return Failure(
            (f"{exc}: create the topics with `popsync topics create`, or check POPSYNC_TOPICS__*",),
            EXIT_USAGE,
        )
    if isinstance(exc, PartitionCountMismatchError):
        return Failure((str(exc),), EXIT_USAGE)
    if isinstance(exc, TopicReadError | TopicProvisioningError):
        return _unreachable(str(exc))
    if isinstance(exc, DeliveryFailed):
        return _unreachable(f"the Kafka broker did not confirm every message ({exc})")
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        name = error.name() if isinstance(error, KafkaError) else type(exc).__name__
        return _unreachable(f"Kafka: {name}")
    return None


def _database_failure(exc: BaseException) -> Failure | None:
    if isinstance(exc, psycopg.OperationalError):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _unreachable(f"PostgreSQL: {first[:200]}")
    return None


def _internal(exc: BaseException) -> Failure:
    return Failure(
        (f"internal error ({type(exc).__name__}); rerun with POPSYNC_LOG_LEVEL=DEBUG for details",),
        EXIT_INTERNAL,
        internal=True,
    )
