"""Where the auth service keeps its state: one SQLite file (one auth process: the local
stack, Compose) or a PostgreSQL database (several auth pods in Kubernetes, which must share
users, keys, sessions, the sign-in throttle and the audit log).

Both take the same SQL, written for SQLite (`?` placeholders; `REAL` for epoch seconds,
which PostgreSQL stores as DOUBLE PRECISION: its own REAL is single precision, which would
round a timestamp to minutes). Rows come back as mappings. `tx()` is one transaction that
serializes writers (SQLite's BEGIN IMMEDIATE; on PostgreSQL, `lock=True` also takes a
transaction-scoped advisory lock, for read-then-write sequences such as the throttle's).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

URL_ENV = "PREFECTSTACK_AUTH_DATABASE_URL"  # postgresql://...; unset: the SQLite file
SCHEMA_ENV = "PREFECTSTACK_AUTH_DATABASE_SCHEMA"  # the schema of that database to use
DIR_ENV = "PREFECTSTACK_AUTH_DIR"  # the SQLite store's directory
AUDIT_IN_STORE_ENV = "PREFECTSTACK_AUDIT_IN_STORE"  # "1": a SQLite store holds the audit log
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
ADVISORY_LOCK = 0x70667361  # "pfsa": the auth service's one advisory lock
_REAL = re.compile(r"\bREAL\b")


class DatabaseUnavailable(Exception):
    """The shared database could not be reached (the auth service answers 503, which
    Prefect's clients retry, and never lets the request through)."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor: ...


class Database(Protocol):
    kind: str  # "sqlite" | "postgresql"

    def script(self, sql: str) -> None: ...

    def tx(self, *, lock: bool = False) -> Any: ...  # a context manager yielding a Connection

    def query(self, sql: str, args: Sequence[object] = ()) -> list[Mapping[str, Any]]: ...

    def columns(self, table: str) -> set[str]: ...

    def execute(self, sql: str, args: Sequence[object] = ()) -> None: ...

    def close(self) -> None: ...


def private_file(path: Path) -> None:
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        private_file(path)  # SQLite gives its -wal/-shm files the database's mode
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")

    def script(self, sql: str) -> None:
        with self._lock:
            self._conn.executescript(sql)

    @contextmanager
    def tx(self, *, lock: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[object] = ()) -> list[Mapping[str, Any]]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def columns(self, table: str) -> set[str]:
        return {r["name"] for r in self.query(f"PRAGMA table_info({table})")}

    def execute(self, sql: str, args: Sequence[object] = ()) -> None:
        with self._lock:
            self._conn.execute(sql, tuple(args))

    def close(self) -> None:
        self._conn.close()


def _checked(conn: Any) -> Any:
    """The connection, once it answered: a transaction's first statement then meets a live
    one (a dropped connection is found here, where it can still be replaced)."""
    conn.execute("SELECT 1")
    return conn


def postgres_sql(sql: str) -> str:
    """SQLite's dialect of our statements, as PostgreSQL's driver takes it."""
    if "%" in sql:
        raise ValueError("a literal % in a statement: not supported here")
    return _REAL.sub("DOUBLE PRECISION", sql).replace("?", "%s")


class _PgConnection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(postgres_sql(sql), tuple(args))
        return cursor


class PostgresDatabase:
    """One connection (psycopg 3, autocommit outside `tx`), shared under a lock: the auth
    service's statements are short, indexed lookups. A connection the server dropped (a
    restart, a failover) is replaced and the read or write tried once more on the new one;
    a transaction first checks its connection. A server still away raises
    DatabaseUnavailable: the request is refused, never let through."""

    kind = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None,
                 connect_timeout: float = 10) -> None:
        """`schema`: a schema of its own in a database shared with others (Prefect's), made
        on first use; its tables are found there first."""
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"not a plain schema name: {schema!r}")
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: Any = None

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            try:
                self._conn = self._connect()
            except psycopg.OperationalError as exc:
                self._conn = None
                raise DatabaseUnavailable(str(exc).strip()) from exc
        return self._conn

    def _once_more(self, action: Any) -> Any:
        """`action(connection)`, again on a new connection if the server dropped this one."""
        import psycopg

        conn = self._connection()
        try:
            return action(conn)
        except psycopg.OperationalError as exc:
            if not conn.broken:
                raise DatabaseUnavailable(str(exc).strip()) from exc
        try:
            return action(self._connection())
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(str(exc).strip()) from exc

    def _connect(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                               connect_timeout=max(1, int(self.connect_timeout)),
                               application_name="prefectstack-auth")
        if self.schema is not None:
            with conn.transaction():  # pods starting together: one creates it
                conn.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            conn.execute(f"SET search_path TO {self.schema}")
        return conn

    def script(self, sql: str) -> None:
        with self.tx(lock=True) as conn:  # concurrent CREATE TABLE IF NOT EXISTS can clash
            for statement in (s.strip() for s in sql.split(";")):
                if statement:
                    conn.execute(statement)

    @contextmanager
    def tx(self, *, lock: bool = False) -> Iterator[Connection]:
        import psycopg

        with self._lock:
            conn = self._once_more(_checked)
            try:
                with conn.transaction():
                    wrapped = _PgConnection(conn)
                    if lock:
                        wrapped.execute("SELECT pg_advisory_xact_lock(?)", (ADVISORY_LOCK,))
                    yield wrapped
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(str(exc).strip()) from exc

    def query(self, sql: str, args: Sequence[object] = ()) -> list[Mapping[str, Any]]:
        with self._lock:
            rows: list[Mapping[str, Any]] = self._once_more(
                lambda c: c.execute(postgres_sql(sql), tuple(args)).fetchall())
            return rows

    def columns(self, table: str) -> set[str]:
        rows = self.query("SELECT column_name FROM information_schema.columns"
                          " WHERE table_schema = current_schema() AND table_name = ?", (table,))
        return {r["column_name"] for r in rows}

    def execute(self, sql: str, args: Sequence[object] = ()) -> None:
        with self._lock:
            self._once_more(lambda c: c.execute(postgres_sql(sql), tuple(args)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def from_environment(environ: Mapping[str, str], directory: Path, file: str
                     ) -> SqliteDatabase | PostgresDatabase:
    url = environ.get(URL_ENV)
    if url:
        return PostgresDatabase(url, schema=environ.get(SCHEMA_ENV) or None)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteDatabase(directory / file)
