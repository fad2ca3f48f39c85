"""Disk outbox for telemetry and events: at-least-once delivery across outages and restarts.

Storage is one SQLite database in WAL mode (stdlib ``sqlite3``, ``synchronous=FULL``): an
append is one small transaction that is on disk before ``append()`` returns, so a record exists
durably before any publish is attempted, and a process kill or power loss cannot tear a record
(SQLite's journal does what we would otherwise hand-write for segment files). A record leaves
the outbox only when the broker acknowledged it (PUBACK), or when the bounds drop it.

Bounds: total bytes and record age. The bytes bound covers the ``-wal`` file too: a quarter of
it is the WAL's (``wal_autocheckpoint`` and ``journal_size_limit`` keep the WAL within it, and
housekeeping truncates a WAL past it), the rest is the records' (:attr:`Outbox.record_budget`).
Oldest records are dropped first; every drop increments a persistent ``dropped`` counter that
telemetry reports as ``outbox_dropped``.

A full disk never raises out of :meth:`Outbox.append`: the outbox truncates its WAL, drops the
oldest quarter of its records and tries once more; if the write still fails the record is lost,
counted in ``dropped`` (in memory, as the disk cannot take the counter). ``disk_full`` is set
while a write fails or fewer than ``LOW_FREE_BYTES`` are free (SQLite may go on writing into
the WAL space it holds), and listeners hear each change. An outbox that cannot even be opened
(the disk is full at start) runs in memory, so the agent starts and serves; records are then
not durable until a restart.

A PUBACK with a failure reason (>= 0x80, e.g. 0x87 not authorized, 0x95 packet too large) is
final: the record is removed and counted in ``rejected`` (re-sending would be refused again).

:class:`OutboxDrainer` publishes records in ``seq`` order with a bounded window in flight.
Unacknowledged records are re-sent: by paho after a reconnect within one process (QoS 1 DUP),
and from disk after a restart. Duplicates are possible; the host de-duplicates by device+seq.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.mqtt.drainer import OutboxDrainer, Publisher

log = logging.getLogger(__name__)

__all__ = ["Outbox", "OutboxDrainer", "OutboxRecord", "OutboxStats", "Publisher"]

#: Below this many free bytes the disk counts as full (state and events say so) even while the
#: outbox still writes into the space its WAL already holds.
LOW_FREE_BYTES = 256 << 10
RECORD_OVERHEAD = 32  # bytes counted per record on top of topic + payload
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('dropped', 0), ('rejected', 0);
"""


@dataclass(frozen=True)
class OutboxRecord:
    seq: int
    topic: str
    payload: bytes
    qos: int
    created: float  # time.time() at append


@dataclass(frozen=True)
class OutboxStats:
    records: int
    bytes: int
    dropped: int
    rejected: int
    oldest_seq: int | None
    oldest_age_s: float | None
    max_bytes: int
    max_age_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outbox:
    """A bounded, durable FIFO of records to publish. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 20 << 20,
        max_age_s: float = 7 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        self._full_listeners: list[Callable[[bool], None]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.disk_full = False  # the last write failed for space (reported in state and events)
        self.in_memory = False  # the file could not be opened: records are not durable
        self._lost = 0  # records lost to a full disk (not persisted: the disk is full)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if _is_full(exc):
                log.error(
                    "outbox %s cannot be opened, the disk is full (%s): keeping records in "
                    "memory until the agent restarts; free space in the state directory",
                    self.path,
                    exc,
                )
                self.disk_full = self.in_memory = True
                return self._connect(":memory:")
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "outbox %s is unreadable (%s); moved aside to %s, starting empty",
                self.path,
                exc,
                aside,
            )
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            return self._connect()

    def _connect(self, where: str | None = None) -> sqlite3.Connection:
        db = sqlite3.connect(where or self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={max(8, self.wal_reserve // 4096)}")
            db.execute(f"PRAGMA journal_size_limit={self.wal_reserve}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every append (e.g. to wake a drainer; must not block)."""
        self._listeners.append(fn)

    def append(self, topic: str, payload: bytes | Callable[[int], bytes], qos: int = 1) -> int:
        """Store one record durably and return its ``seq`` (strictly increasing, never reused).

        ``payload`` may be a function of the seq, so a message can carry its own seq. Returns 0
        when the disk is full and the record could not be stored (see the module docstring).
        """
        with self._lock:
            was_full = self.disk_full
            try:
                seq = self._append_locked(topic, payload, qos)
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
                seq = 0 if was_full else self._retry_after_freeing(topic, payload, qos, exc)
            if seq == 0:
                self._lost += 1
            self.disk_full = seq == 0 or self._low_space()
            if self.disk_full != was_full:
                log.log(
                    logging.ERROR if self.disk_full else logging.WARNING,
                    "outbox: %s",
                    f"disk full (less than {LOW_FREE_BYTES} bytes free or a write failed): "
                    "records may be lost (counted in outbox_dropped) until space is freed"
                    if self.disk_full
                    else f"disk space is back: {self._lost} record(s) were lost",
                )
        if self.disk_full != was_full:
            for on_full in list(self._full_listeners):
                on_full(self.disk_full)
        if seq:
            for fn in list(self._listeners):
                fn()
        return seq

    def disk_report(self) -> dict[str, Any] | None:
        """For the device's state: None while writes succeed, else what is wrong and what to do."""
        if not self.disk_full:
            return None
        return {
            "full": True,
            "in_memory": self.in_memory,
            "records_lost": self._lost,
            "hint": f"free space on the filesystem of {self.path.parent} (old files, logs); "
            "the agent keeps serving and resumes durable telemetry by itself"
            + ("" if not self.in_memory else " after a restart"),
        }

    def _low_space(self) -> bool:
        if self.in_memory:
            return True
        try:
            return shutil.disk_usage(self.path.parent).free < LOW_FREE_BYTES
        except OSError:
            return False

    def add_full_listener(self, fn: Callable[[bool], None]) -> None:
        """Call ``fn(disk_full)`` when appends start or stop failing for space."""
        self._full_listeners.append(fn)

    def _retry_after_freeing(
        self, topic: str, payload: bytes | Callable[[int], bytes], qos: int, exc: Exception
    ) -> int:
        log.warning("outbox: disk full (%s); dropping the oldest records to make room", exc)
        self._free_space_locked()
        try:
            return self._append_locked(topic, payload, qos)
        except sqlite3.OperationalError as again:
            if not _is_full(again):
                raise
            return 0

    def _append_locked(self, topic: str, payload: bytes | Callable[[int], bytes], qos: int) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "INSERT INTO records (topic, payload, qos, created, size) VALUES (?,?,?,?,0)",
                (topic, b"", qos, self._clock()),
            )
            seq = int(cur.lastrowid or 0)
            data = payload(seq) if callable(payload) else payload
            size = len(data) + len(topic.encode()) + RECORD_OVERHEAD
            self._db.execute(
                "UPDATE records SET payload = ?, size = ? WHERE seq = ?", (data, size, seq)
            )
            self._enforce_locked()
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return seq

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:  # SQLite may have rolled back already
                log.debug("outbox rollback: %s", exc)

    def _free_space_locked(self) -> None:
        """After a write failed for space: truncate the WAL, drop the oldest quarter."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (n,) = self._db.execute("SELECT COUNT(*) FROM records").fetchone()
            cut = self._db.execute(
                "SELECT seq FROM records ORDER BY seq LIMIT 1 OFFSET ?", (max(0, n // 4),)
            ).fetchone()
            if cut is not None:
                cur = self._db.execute("DELETE FROM records WHERE seq < ?", (int(cut[0]),))
                self._lost += max(0, cur.rowcount)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            self._rollback()
            log.warning("outbox: could not free space (%s)", exc)

    def peek(self, after_seq: int = 0, limit: int = 100) -> list[OutboxRecord]:
        """The oldest records with ``seq > after_seq``, in seq order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, created FROM records WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [OutboxRecord(int(s), str(t), bytes(p), int(q), float(c)) for s, t, p, q, c in rows]

    def ack(self, seq: int) -> bool:
        """Remove a record the broker acknowledged. False if it was already gone."""
        with self._lock:
            cur = self._db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            return cur.rowcount > 0

    def reject(self, seq: int) -> bool:
        """Remove a record the broker refused for good, counting it in ``rejected``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute("DELETE FROM records WHERE seq = ?", (seq,))
                if cur.rowcount:
                    self._bump("rejected", 1)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
            return cur.rowcount > 0

    def enforce_bounds(self) -> int:
        """Drop records past the age or byte bound (oldest first); return how many. Truncates
        the WAL first when it holds more than a quarter of the byte bound."""
        with self._lock:
            if self.wal_bytes() > self.wal_reserve:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._enforce_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return n

    @property
    def dropped(self) -> int:
        """Records dropped by the bounds since the outbox was created (persistent), plus those
        lost to a full disk since this process started."""
        return self._counter("dropped") + self._lost

    @property
    def wal_reserve(self) -> int:
        """The share of ``max_bytes`` kept for the WAL file."""
        return self.max_bytes // 4

    @property
    def record_budget(self) -> int:
        """Bytes the records may take: ``max_bytes`` less the WAL's share."""
        return self.max_bytes - self.wal_reserve

    def wal_bytes(self) -> int:
        try:
            return Path(str(self.path) + "-wal").stat().st_size if not self.in_memory else 0
        except OSError:
            return 0

    def stats(self) -> OutboxStats:
        with self._lock:
            n, total, oldest, created = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(seq), MIN(created) FROM records"
            ).fetchone()
            return OutboxStats(
                records=int(n),
                bytes=int(total),
                dropped=self.dropped,
                rejected=self._counter("rejected"),
                oldest_seq=None if oldest is None else int(oldest),
                oldest_age_s=None if created is None else max(0.0, self._clock() - created),
                max_bytes=self.max_bytes,
                max_age_s=self.max_age_s,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----- internals (caller holds the lock and an open transaction) ------------------
    def _enforce_locked(self) -> int:
        cur = self._db.execute(
            "DELETE FROM records WHERE created < ?", (self._clock() - self.max_age_s,)
        )
        dropped = max(0, cur.rowcount)
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()
        excess = int(total) - self.record_budget
        if excess > 0:
            cut, freed = 0, 0
            for seq, size in self._db.execute("SELECT seq, size FROM records ORDER BY seq"):
                cut, freed = int(seq), freed + int(size)
                if freed >= excess:
                    break
            cur = self._db.execute("DELETE FROM records WHERE seq <= ?", (cut,))
            dropped += max(0, cur.rowcount)
        if dropped:
            self._bump("dropped", dropped)
            log.warning("outbox full or stale: dropped %d oldest record(s)", dropped)
        return dropped

    def _bump(self, name: str, n: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    def _counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL, or an I/O error that is ENOSPC underneath (SQLite reports both)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        return True
    return "full" in str(exc)
