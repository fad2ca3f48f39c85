"""Disk outbox for telemetry and events: at-least-once delivery across outages and restarts.

Storage is one SQLite database in WAL mode (stdlib ``sqlite3``, ``synchronous=FULL``): an
append is one small transaction that is on disk before ``append()`` returns, so a record exists
durably before any publish is attempted, and a process kill or power loss cannot tear a record
(SQLite's journal does what we would otherwise hand-write for segment files). A record leaves
the outbox only when the broker acknowledged it (PUBACK), or when the bounds drop it.

Bounds: total bytes and record age. Oldest records are dropped first; every drop increments a
persistent ``dropped`` counter that telemetry reports as ``outbox_dropped``. A PUBACK with a
failure reason (>= 0x80, e.g. 0x87 not authorized, 0x95 packet too large) is final: the record is
removed and counted in ``rejected`` (re-sending would be refused again).

:class:`OutboxDrainer` publishes records in ``seq`` order with a bounded window in flight.
Unacknowledged records are re-sent: by paho after a reconnect within one process (QoS 1 DUP),
and from disk after a restart. Duplicates are possible; the host de-duplicates by device+seq.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.mqtt.types import PublishHandle

log = logging.getLogger(__name__)

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
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

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
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

        ``payload`` may be a function of the seq, so a message can carry its own seq.
        """
        with self._lock:
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
                self._db.execute("ROLLBACK")
                raise
        for fn in list(self._listeners):
            fn()
        return seq

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
            cur = self._db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            if cur.rowcount:
                self._bump("rejected", 1)
            self._db.execute("COMMIT")
            return cur.rowcount > 0

    def enforce_bounds(self) -> int:
        """Drop records past the age or byte bound (oldest first); return how many."""
        with self._lock:
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
        """Records dropped by the bounds since the outbox was created (persistent)."""
        return self._counter("dropped")

    def stats(self) -> OutboxStats:
        with self._lock:
            n, total, oldest, created = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(seq), MIN(created) FROM records"
            ).fetchone()
            return OutboxStats(
                records=int(n),
                bytes=int(total),
                dropped=self._counter("dropped"),
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
        excess = int(total) - self.max_bytes
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


class Publisher(Protocol):
    """What the drainer needs from agent.mqtt.transport.Transport."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> PublishHandle: ...

    def add_connection_listener(self, fn: Callable[[bool], None]) -> None: ...


class OutboxDrainer:
    """Moves outbox records to the broker, oldest first, ``window`` in flight at most."""

    def __init__(
        self, outbox: Outbox, transport: Publisher, *, window: int = 16, housekeeping_s: float = 5.0
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.window = max(1, window)
        self.housekeeping_s = housekeeping_s
        self.acked = 0
        self.rejected = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        outbox.add_listener(self._wake.set)
        transport.add_connection_listener(lambda _up: self._wake.set())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outbox-drainer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        inflight: dict[int, PublishHandle] = {}
        cursor = 0  # highest seq handed to the transport (re-wound when a publish is lost)
        next_housekeeping = time.monotonic() + self.housekeeping_s
        while not self._stop.is_set():
            self._wake.clear()
            for seq, handle in list(inflight.items()):
                if handle.done():
                    del inflight[seq]
                    cursor = self._settle(seq, handle, cursor)
            if self.transport.connected and len(inflight) < self.window:
                for rec in self.outbox.peek(cursor, self.window):
                    if len(inflight) >= self.window or not self.transport.connected:
                        break
                    cursor = rec.seq
                    if rec.seq in inflight:
                        continue
                    handle = self.transport.publish(rec.topic, rec.payload, rec.qos)
                    handle.add_done_callback(lambda _h: self._wake.set())
                    inflight[rec.seq] = handle
            if time.monotonic() >= next_housekeeping:
                self.outbox.enforce_bounds()
                next_housekeeping = time.monotonic() + self.housekeeping_s
            self._wake.wait(self.housekeeping_s)

    def _settle(self, seq: int, handle: PublishHandle, cursor: int) -> int:
        if handle.reason_code is None:  # never acknowledged (offline, stopped): send again
            return min(cursor, seq - 1)
        if handle.ok:
            self.outbox.ack(seq)
            self.acked += 1
        else:
            log.warning(
                "broker refused outbox record %d (reason %#04x); removed", seq, handle.reason_code
            )
            self.outbox.reject(seq)
            self.rejected += 1
        return cursor
