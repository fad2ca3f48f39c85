"""The registry's SQLite plumbing: open, migrate, one locked connection, transactions.

See :mod:`deploy.fleet.registry` for what the file holds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self

from agent.errors import ConfigError
from deploy.fleet.migrations import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("deploy.fleet.registry")


def now_or(t: float | None) -> float:
    return time.time() if t is None else t


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class RegistryDB:
    """One connection to the registry file (migrated on open), guarded by a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the registry {self.path}: {exc}",
                hint="check the directory exists and is writable",
            ) from exc
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # ---- plumbing -----------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._lock:
            version = self.schema_version
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"registry {self.path} has schema version {version}, newer than this "
                    f"edgeloop understands ({SCHEMA_VERSION})",
                    hint="upgrade edgeloop, or point --registry at another file",
                )
            while version < SCHEMA_VERSION:
                script = MIGRATIONS[version]
                try:
                    self._db.executescript(
                        f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
                    )
                except sqlite3.Error as exc:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    if self.schema_version > version:  # another process migrated meanwhile
                        version = self.schema_version
                        continue
                    raise ConfigError(
                        f"registry {self.path}: migration to version {version + 1} failed: {exc}",
                        hint="the file is unchanged; restore it from a backup if it is damaged",
                    ) from exc
                log.info("registry %s migrated to schema version %d", self.path, version + 1)
                version += 1

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db.in_transaction:  # inside transaction(): one commit for the batch
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction around many calls (the ingest's batches): they commit together."""
        return self._tx()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
