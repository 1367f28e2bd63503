"""PostgreSQL: the connection every store shares, the schema, and binary COPY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from popsync.settings import PostgresSettings

log = logging.getLogger(__name__)


class DatabaseUnreachable(ConnectionError):
    """PostgreSQL at `address` refused or did not answer a new connection within `waited`
    seconds; `detail` is libpq's reason (never the DSN, which may hold a password)."""

    def __init__(self, address: str, waited: float, detail: str) -> None:
        super().__init__(f"no connection to {address} within {waited:g} s: {detail}")
        self.address = address
        self.waited = waited
        self.detail = detail


class DirectoryRefusal(Exception):
    """A directory (publishers, partners) as it stands refuses an operator's change: an
    unknown or revoked id, a taken one. One line, no secrets."""


def dsn_address(dsn: str) -> str:
    """host:port/database of a libpq DSN, without user or password, for messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DSN"
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    return f"{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


def _reason(exc: psycopg.Error) -> str:
    """libpq's reason, e.g. "Connection refused", from its first line."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first.rsplit(" failed: ", 1)[-1].strip()[:200]


def connect(settings: PostgresSettings, **options: Any) -> psycopg.Connection[Any]:
    """A new synchronous connection, bounded by `connect_timeout_seconds`; raises
    DatabaseUnreachable (one line) when none can be made."""
    dsn = settings.dsn.get_secret_value()
    # libpq's connect_timeout is whole seconds, at least 2.
    waited = max(int(settings.connect_timeout_seconds), 2)
    try:
        return psycopg.connect(dsn, connect_timeout=waited, **options)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(dsn_address(dsn), waited, _reason(exc)) from exc


def operator_connection(settings: PostgresSettings) -> psycopg.Connection[Any]:
    """A connection for operators' commands: autocommit, since each change opens its own
    transaction (with its audit row)."""
    return connect(settings, autocommit=True)


def require_database(settings: PostgresSettings) -> None:
    """Raise DatabaseUnreachable unless a connection can be made now."""
    connect(settings).close()


def schema_sql() -> str:
    return resources.files("popsync.adapters.postgres").joinpath("schema.sql").read_text("utf-8")


class Database:
    """One lazily (re)opened async connection, used by one transaction at a time.

    A worker may run several agents (one per topic it reads); the lock
    keeps them from interleaving commands on the shared connection. After any
    failure the connection is dropped, so the retry starts on a clean one.
    """

    def __init__(self, settings: PostgresSettings, application_name: str = "popsync") -> None:
        self._settings = settings
        self._application_name = application_name  # shows who holds a connection
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self._settings.dsn.get_secret_value(),
                connect_timeout=int(self._settings.connect_timeout_seconds),
                application_name=self._application_name,
            )
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction(), conn.cursor() as cursor:
                    yield cursor
            except BaseException:
                await self._discard()
                raise

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                await conn.close()

    async def migrate(self) -> None:
        async with self.transaction() as cur:
            await cur.execute(schema_sql().encode())

    async def close(self) -> None:
        await self._discard()


async def copy_rows(
    cur: psycopg.AsyncCursor[Any],
    table: str,
    columns: Mapping[str, str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """COPY `rows` into the staging table `table`, whose `columns` map name to type.

    Binary format: faster than text, and bytea needs no hex encoding.
    """
    query = f"COPY pg_temp.{table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    async with cur.copy(query) as copy:
        copy.set_types(list(columns.values()))
        for row in rows:
            await copy.write_row(row)
