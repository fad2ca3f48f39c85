"""The registry's plumbing: open (SQLite file or PostgreSQL URL), migrate, one locked
connection, transactions.

See :mod:`deploy.fleet.registry` for what the registry holds and :mod:`deploy.fleet.engine`
for the differences between the two engines.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self

from agent.errors import ConfigError
from deploy.fleet.engine import Engine, Row, is_url, open_engine, redact
from deploy.fleet.migrations import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("deploy.fleet.registry")


def now_or(t: float | None) -> float:
    return time.time() if t is None else t


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class RegistryDB:
    """One connection to the registry (migrated on open), guarded by a lock.

    ``target`` is a file path (SQLite, created if missing) or a ``postgresql://`` URL."""

    def __init__(self, target: str | Path) -> None:
        self.url = str(target) if is_url(target) else None
        self.path = Path(target) if self.url is None else Path(redact(str(target)))
        self._lock = threading.RLock()
        self._db: Engine = open_engine(target)
        self._migrate()

    # ---- plumbing -----------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.name

    @property
    def where(self) -> str:
        """The registry's file or URL (password hidden), for messages."""
        return redact(self.url) if self.url else str(self.path)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.schema_version()

    def _migrate(self) -> None:
        with self._lock:
            version = self.schema_version
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"registry {self.where} has schema version {version}, newer than this "
                    f"edgeloop understands ({SCHEMA_VERSION})",
                    hint="upgrade edgeloop, or point --registry at another registry",
                )
            while version < SCHEMA_VERSION:
                try:
                    self._db.migrate_step(MIGRATIONS[version], version + 1)
                except Exception as exc:
                    if self.schema_version > version:  # another process migrated meanwhile
                        version = self.schema_version
                        continue
                    raise ConfigError(
                        f"registry {self.where}: migration to version {version + 1} failed: {exc}",
                        hint="the registry is unchanged; restore it from a backup if damaged",
                    ) from exc
                log.info("registry %s migrated to schema version %d", self.where, version + 1)
                version = self.schema_version

    @contextmanager
    def _tx(self) -> Iterator[Engine]:
        with self._lock:
            if self._db.in_transaction:  # inside transaction(): one commit for the batch
                yield self._db
                return
            self._db.begin()
            try:
                yield self._db
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    def transaction(self) -> AbstractContextManager[Engine]:
        """One transaction around many calls (the ingest's batches): they commit together."""
        return self._tx()

    def is_transient(self, exc: BaseException) -> bool:
        """True for an error worth retrying the transaction for (lock contention, deadlock,
        a dropped server connection)."""
        return isinstance(exc, self._db.transient)

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
