"""The two SQL engines under the registry: SQLite (embedded, the default) and PostgreSQL.

The registry's migrations and queries are written once, in the subset both engines share
(``?`` parameters, ``INSERT ... ON CONFLICT (...) DO UPDATE/NOTHING``, ``RETURNING id``); this
module holds every difference, so nothing above it knows which engine it talks to:

* parameters: ``?`` becomes psycopg's ``%s`` (a literal ``%`` is doubled);
* DDL: ``REAL`` -> ``DOUBLE PRECISION`` (PostgreSQL's REAL is 4 bytes: timestamps would lose
  their seconds), ``INTEGER`` -> ``BIGINT``, ``INTEGER PRIMARY KEY AUTOINCREMENT`` -> an
  identity column, ``TEXT`` -> ``TEXT COLLATE "C"`` (byte order, as SQLite sorts), and
  ``WITHOUT ROWID`` dropped;
* the schema version: ``PRAGMA user_version`` vs a one-row ``edgeloop_schema`` table, migrations
  serialised across processes by ``BEGIN IMMEDIATE`` vs a transaction advisory lock;
* rows: both give ``row[0]``, ``row["name"]`` and ``dict(row)``;
* locks that die with the process: :meth:`Engine.try_lock` (``pg_try_advisory_lock``; SQLite
  has none, the caller keeps a lease row with an expiry instead).

``open_engine(target)`` picks the engine: ``postgresql://...`` (or ``postgres://``) is a
PostgreSQL connection string (libpq syntax, see docs/operations.md), anything else a file path.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

#: A result row: ``row[0]``, ``row["column"]``, ``dict(row)`` and ``tuple(row)`` work on both.
Row = Any

URL_SCHEMES = ("postgresql://", "postgres://")
LOCK_NAMESPACE = 0x45444745  # "EDGE": the first key of every edgeloop advisory lock


def is_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL with its password hidden (for logs and messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def lock_key(name: str) -> int:
    """A stable non-negative 31-bit key for ``name`` (the second key of an advisory lock)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF


class Engine(ABC):
    """One connection. Callers serialise access (the registry holds a lock around it)."""

    name: str
    #: Errors worth retrying the whole transaction for (lock contention, deadlock, lost link).
    transient: tuple[type[BaseException], ...]
    #: Constraint violations (foreign key, not null, unique).
    integrity: tuple[type[BaseException], ...]

    def __init__(self, target: str) -> None:
        self.target = target

    @abstractmethod
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a cursor (``rowcount``, ``fetchone``, ``fetchall``)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per row; returns the rows changed in total."""

    @property
    @abstractmethod
    def in_transaction(self) -> bool: ...

    @abstractmethod
    def begin(self) -> None:
        """Start a transaction that takes the write lock at once (SQLite: BEGIN IMMEDIATE)."""

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def migrate_step(self, script: str, version: int) -> None:
        """Run migration ``script`` and set the version to ``version``, in one transaction."""

    def try_lock(self, name: str) -> bool | None:
        """Take a session lock on ``name`` released when this connection ends (even by
        SIGKILL); None when the engine has none (the caller uses a lease row)."""
        return None

    def unlock(self, name: str) -> None:
        return None

    def holds_lock(self, name: str) -> bool | None:
        """Whether this connection holds the lock (None: the engine has no such locks)."""
        return None

    def lock_taken(self, name: str) -> bool | None:
        """Whether any session holds the lock (None: the engine has no such locks)."""
        return None

    #: SQL for the hour number of column ``ts`` (``floor(ts / 3600)`` as an integer).
    hour_sql: str

    @abstractmethod
    def close(self) -> None: ...


class SqliteEngine(Engine):
    name = "sqlite"
    transient = (sqlite3.OperationalError,)  # "database is locked"
    integrity = (sqlite3.IntegrityError,)
    hour_sql = "CAST(ts / 3600 AS INTEGER)"  # truncates: ts is positive

    def __init__(self, target: str) -> None:
        super().__init__(target)
        try:
            self.db = sqlite3.connect(
                target, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the registry {target}: {exc}",
                hint="check the directory exists and is writable",
            ) from exc
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return int(self.db.executemany(sql, rows).rowcount)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate_step(self, script: str, version: int) -> None:
        try:
            self.db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except sqlite3.Error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """A registry query in psycopg's parameter style."""
    return sql.replace("%", "%%").replace("?", "%s")


_DDL = (
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
)


def pg_ddl(script: str) -> str:
    """A migration written for SQLite, in PostgreSQL's types (see the module docstring)."""
    for pattern, repl in _DDL:
        script = pattern.sub(repl, script)
    return script


class PostgresEngine(Engine):
    name = "postgresql"
    hour_sql = "CAST(FLOOR(ts / 3600) AS BIGINT)"  # a plain CAST rounds

    def __init__(self, target: str) -> None:
        super().__init__(target)
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "a postgresql:// registry needs psycopg 3",
                hint="pip install 'psycopg[binary]' (the host extra has it)",
            ) from exc
        self._psycopg = psycopg
        self.transient = (psycopg.errors.OperationalError, psycopg.errors.TransactionRollback)
        self.integrity = (psycopg.errors.IntegrityError,)
        self._locks: set[str] = set()
        self._connect()

    def _connect(self) -> None:
        psycopg = self._psycopg
        try:
            self.db = psycopg.connect(
                self.target, autocommit=True, row_factory=_pg_row, connect_timeout=10
            )
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the registry {redact(self.target)}: {exc}".strip(),
                hint="check the server runs, the database exists and the URL's user may log in",
            ) from exc

    def _live(self) -> Any:
        """The connection, reconnected when the server dropped it (outside a transaction; the
        session locks it held are gone then, :meth:`holds_lock` says so)."""
        if self.db.broken:
            self._locks.clear()
            self._connect()
        return self.db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._live().execute(pg_sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        with self._live().cursor() as cur:
            cur.executemany(pg_sql(sql), [tuple(r) for r in rows])
            return max(0, int(cur.rowcount))

    @property
    def in_transaction(self) -> bool:
        if self.db.broken:  # the server is gone, and the transaction with it
            return False
        status = self.db.info.transaction_status
        return bool(status != self._psycopg.pq.TransactionStatus.IDLE)

    def begin(self) -> None:
        self.execute("BEGIN")

    def schema_version(self) -> int:
        if self.execute("SELECT to_regclass('edgeloop_schema')").fetchone()[0] is None:
            return 0
        row = self.execute("SELECT version FROM edgeloop_schema").fetchone()
        return int(row[0]) if row else 0

    def migrate_step(self, script: str, version: int) -> None:
        self.begin()
        try:
            # one migrator at a time; the others wait here, then see the new version
            self.execute("SELECT pg_advisory_xact_lock(?, 0)", (LOCK_NAMESPACE,))
            self.execute("CREATE TABLE IF NOT EXISTS edgeloop_schema (version INTEGER NOT NULL)")
            row = self.execute("SELECT version FROM edgeloop_schema").fetchone()
            if (int(row[0]) if row else 0) < version:
                self.db.execute(pg_ddl(script))  # several statements: no parameters
                self.execute("DELETE FROM edgeloop_schema")
                self.execute("INSERT INTO edgeloop_schema VALUES (?)", (version,))
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def try_lock(self, name: str) -> bool | None:
        row = self.execute(
            "SELECT pg_try_advisory_lock(?, ?)", (LOCK_NAMESPACE, lock_key(name))
        ).fetchone()
        if row[0]:
            self._locks.add(name)
        return bool(row[0])

    def unlock(self, name: str) -> None:
        if name in self._locks and not self.db.broken:
            self.execute("SELECT pg_advisory_unlock(?, ?)", (LOCK_NAMESPACE, lock_key(name)))
        self._locks.discard(name)

    def holds_lock(self, name: str) -> bool | None:
        if name not in self._locks or self.db.broken:
            return False
        row = self.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND "
            "pid = pg_backend_pid() AND classid = ? AND objid = ? AND objsubid = 2",
            (LOCK_NAMESPACE, lock_key(name)),
        ).fetchone()
        return bool(row[0])

    def lock_taken(self, name: str) -> bool | None:
        row = self.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
            "classid = ? AND objid = ? AND objsubid = 2",
            (LOCK_NAMESPACE, lock_key(name)),
        ).fetchone()
        return bool(row[0])

    def close(self) -> None:
        self.db.close()


class PgRow(tuple[Any, ...]):
    """A PostgreSQL row that behaves like ``sqlite3.Row``."""

    _names: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


def _pg_row(cursor: Any) -> Any:
    names = tuple(c.name for c in cursor.description or ())

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._names = names
        return row

    return make


def open_engine(target: str | Path) -> Engine:
    """The engine for a registry path or ``postgresql://`` URL."""
    if is_url(target):
        return PostgresEngine(str(target))
    return SqliteEngine(str(target))
