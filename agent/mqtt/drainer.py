"""Moving outbox records to the broker: :class:`OutboxDrainer` (see agent/mqtt/outbox.py)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from agent.mqtt.types import PublishHandle

if TYPE_CHECKING:
    from agent.mqtt.outbox import Outbox

log = logging.getLogger("agent.mqtt.outbox")


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
        self._settled: dict[int, bool] = {}  # acknowledged or refused, not yet deleted
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
            try:
                cursor = self._step(inflight, cursor)
                if time.monotonic() >= next_housekeeping:
                    self._retry_settled()
                    self.outbox.enforce_bounds()
                    next_housekeeping = time.monotonic() + self.housekeeping_s
            except Exception:  # a full disk (sqlite) or a bug: never end the thread
                log.exception(
                    "outbox drainer: step failed; retrying in %.0f s", self.housekeeping_s
                )
                self._stop.wait(self.housekeeping_s)
                continue
            self._wake.wait(self.housekeeping_s)

    def _step(self, inflight: dict[int, PublishHandle], cursor: int) -> int:
        for seq, handle in list(inflight.items()):
            if handle.done():
                del inflight[seq]
                cursor = self._settle(seq, handle, cursor)
        if self.transport.connected and len(inflight) < self.window:
            for rec in self.outbox.peek(cursor, self.window):
                if len(inflight) >= self.window or not self.transport.connected:
                    break
                cursor = rec.seq
                if rec.seq in inflight or rec.seq in self._settled:
                    continue
                handle = self.transport.publish(rec.topic, rec.payload, rec.qos)
                handle.add_done_callback(lambda _h: self._wake.set())
                inflight[rec.seq] = handle
        return cursor

    def _settle(self, seq: int, handle: PublishHandle, cursor: int) -> int:
        if handle.reason_code is None:  # never acknowledged (offline, stopped): send again
            return min(cursor, seq - 1)
        if handle.ok:
            self.acked += 1
        else:
            log.warning(
                "broker refused outbox record %d (reason %#04x); removed", seq, handle.reason_code
            )
            self.rejected += 1
        self._settled[seq] = handle.ok
        self._remove(seq)
        return cursor

    def _remove(self, seq: int) -> None:
        """Delete a settled record; on a full disk the DELETE itself can fail (WAL space): the
        record is then remembered, not sent again, and deleted at the next housekeeping."""
        ok = self._settled[seq]
        try:
            self.outbox.ack(seq) if ok else self.outbox.reject(seq)
        except sqlite3.OperationalError as exc:
            log.warning("outbox: cannot remove settled record %d yet (%s)", seq, exc)
            return
        del self._settled[seq]

    def _retry_settled(self) -> None:
        for seq in list(self._settled):
            self._remove(seq)
