"""Ingest that keeps up and loses nothing: the host worker behind ``edge-deploy collect``.

* **Acknowledged after commit.** The MQTT session is persistent (``clean_start`` false, a stable
  client id) and paho's manual acknowledgement is on: a message is PUBACKed only once the batch
  holding it is committed to the registry. A worker killed with a backlog loses nothing: the
  broker redelivers what was never acknowledged when the worker's session reconnects, and the
  registry drops what it already has (``(device, seq)`` is the key of a window).
* **Bounded, with backpressure.** The MQTT5 Receive Maximum caps the messages in flight to the
  worker (acknowledged ones make room), so the queue between the network thread and the writer
  never holds more than that; beyond it, messages wait at the broker.
* **Batched.** The writer takes up to ``batch_max`` messages or ``batch_s`` of them, applies
  births first, then the windows, in one transaction (one fsync per batch, not per message).
* **Shared.** With a ``share_group`` (``edge-deploy collect`` uses one by default) several
  workers split the devices' messages through an MQTT5 shared subscription.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import EdgeloopError, ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.wire.status import Telemetry
from agent.wire.topics import FLEET_KINDS, ParsedTopic, host_subscriptions
from deploy.fleet.engine import Engine
from deploy.fleet.inbound import read_message
from deploy.fleet.registry import Registry
from deploy.fleet.rollup import TOUCH_LAST_SEEN, WINDOW_INSERT, WindowRow, window_row
from deploy.mqtt import BrokerAddress

log = logging.getLogger(__name__)

DEFAULT_SHARE_GROUP = "edgeloop-collect"
RETRIES = 8  # transient failures of one batch before it is left unacknowledged


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: int = 0  # trial / warm-up windows (not the model's steady traffic)
    dropped: int = 0  # malformed
    states: int = 0
    events: int = 0
    batches: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))

    def lag_quantile(self, q: float) -> float | None:
        lags = sorted(self.lags)
        return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "lags"}
        p50, p99 = self.lag_quantile(0.5), self.lag_quantile(0.99)
        return out | {
            "lag_p50_s": None if p50 is None else round(p50, 3),
            "lag_p99_s": None if p99 is None else round(p99, 3),
        }


class Ingest:
    def __init__(
        self,
        registry: Registry,
        broker: BrokerAddress,
        *,
        client_id: str | None,
        prefix: str = "edgeloop",
        share_group: str | None = DEFAULT_SHARE_GROUP,
        receive_maximum: int = 10_000,
        batch_max: int = 5_000,
        batch_s: float = 0.25,
        session_expiry_s: int = 3600,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.batch_max, self.batch_s = batch_max, batch_s
        self.stats = IngestStats()
        self.events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=10_000)
        self.inbox: queue.Queue[IncomingMessage] = queue.Queue()  # bounded by receive_maximum
        self._classes: dict[str, str | None] = {}
        self._topics: dict[str, ParsedTopic] = {}
        topics = host_subscriptions(prefix, share_group, kinds=FLEET_KINDS)
        self.transport = broker.client(
            "collect" if share_group else "collector",
            topics,
            self.inbox.put,
            client_id,
            session_expiry_s=session_expiry_s,
            manual_ack=True,
            receive_maximum=receive_maximum,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._idle = threading.Event()

    def start(self, timeout: float = 10.0) -> Ingest:
        self._thread.start()
        self.transport.start()
        if not self.transport.wait_connected(timeout):
            self.stop()
            raise EdgeloopError("the ingest worker cannot connect to the broker", code="broker")
        return self

    def stop(self) -> None:
        """Commit what is queued (bounded by 10 s), then disconnect."""
        self._stop.set()
        self._thread.join(10)
        self.transport.stop(final=None)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once the queue is empty and the last batch is committed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            if self._idle.wait(max(0.0, deadline - time.monotonic())) and self.inbox.empty():
                return True
        return False

    # ---- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        # on stop, what is already queued is still committed (and acknowledged) first
        while not (self._stop.is_set() and self.inbox.empty()):
            batch = self._take()
            if not batch:
                self._idle.set()
                continue
            try:
                self.apply(batch)
            except Exception:
                # not acknowledged: the broker redelivers them after a reconnect
                log.exception("a batch of %d messages failed; not acknowledged", len(batch))
                continue
            for msg in batch:
                self.transport.ack(msg.mid, msg.qos)
            if self.inbox.empty():
                self._idle.set()

    def _take(self) -> list[IncomingMessage]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_s
        while len(batch) < self.batch_max:
            try:
                batch.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def apply(self, batch: Sequence[IncomingMessage]) -> None:
        """Store one batch in one transaction: births, deaths and ``last_seen`` first, then the
        windows. A transient failure (another worker's lock, a deadlock between two workers, a
        dropped database connection) rolls it back and it is tried again, after a growing
        pause, up to RETRIES times."""
        states, rows = self._parse(batch)
        for attempt in range(RETRIES + 1):
            try:
                self._store(states, rows)
                return
            except Exception as exc:
                if attempt == RETRIES or not self.registry.is_transient(exc):
                    raise
                log.warning("batch of %d failed (%s); retrying", len(batch), exc)
                self._stop.wait(min(2.0, 0.05 * 2**attempt))

    def _parse(
        self, batch: Sequence[IncomingMessage]
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[WindowRow]]:
        """(births and deaths, telemetry windows) of a batch; malformed messages dropped."""
        states: list[tuple[str, dict[str, Any]]] = []
        windows: list[tuple[str, dict[str, Any]]] = []
        for msg in batch:
            self.stats.received += 1
            try:
                parsed, body = read_message(msg, self.prefix, self._topics)
            except Exception as exc:  # one device's garbage never fails the batch
                self.stats.dropped += 1
                log.warning("dropped a message on %s: %s", msg.topic, exc)
                continue
            if parsed.kind == "state":
                states.append((parsed.device_id, body))
            elif parsed.kind == "telemetry":
                windows.append((parsed.device_id, body))
            else:
                self.stats.events += 1
                self.events.append((parsed.device_id, body))
        return states, self._rows(windows)

    def _store(self, states: list[tuple[str, dict[str, Any]]], rows: list[WindowRow]) -> None:
        seen: dict[str, float] = {}
        for r in rows:
            seen[r.device] = max(seen.get(r.device, 0.0), r.ts)
        with self.registry.transaction() as db:
            self._write_devices(db, states, seen)
            rows = [
                r if r.class_id else r._replace(class_id=self._class_of(r.device)) for r in rows
            ]
            # in key order: two workers' transactions lock rows in one order (no deadlock)
            rows.sort(key=lambda r: (r.device, r.seq))
            stored = db.executemany(WINDOW_INSERT, [r.as_tuple() for r in rows])
        now = time.time()
        self.stats.lags.extend(now - r.ts for r in rows)
        self.stats.states += len(states)
        self.stats.stored += stored
        self.stats.duplicates += len(rows) - stored
        self.stats.batches += 1

    def _rows(self, windows: Sequence[tuple[str, dict[str, Any]]]) -> list[WindowRow]:
        rows = []
        for device, body in windows:
            try:
                t = Telemetry.from_dict(body)
            except (ProtocolError, TypeError, ValueError) as exc:
                self.stats.dropped += 1
                log.warning("dropped a window of %s: %s", device, exc)
                continue
            if t.trial or t.warmup:
                self.stats.skipped += 1
                continue
            rows.append(window_row(device, self._classes.get(device), t))
        return rows

    def _write_devices(
        self, db: Engine, states: Sequence[tuple[str, dict[str, Any]]], seen: dict[str, float]
    ) -> None:
        """Births/deaths and ``last_seen``, in one pass in device order: every worker locks
        device rows in the same order, so two of them on PostgreSQL cannot deadlock there."""
        by_device: dict[str, list[dict[str, Any]]] = {}
        for device, body in states:  # a device's birth stays before its death
            by_device.setdefault(device, []).append(body)
        touch: list[tuple[float, str, float]] = []
        for device in sorted(by_device.keys() | seen.keys()):
            if device not in by_device:
                touch.append((seen[device], device, seen[device]))
                continue
            if touch:
                db.executemany(TOUCH_LAST_SEEN, touch)
                touch = []
            for body in by_device[device]:
                dev = self.registry.upsert_device_from_state(device, body)
                if dev.hardware_class is not None:
                    self._classes[device] = dev.hardware_class
                    db.execute(
                        "UPDATE telemetry_windows SET class_id = ? WHERE device = ? AND "
                        "class_id IS NULL",
                        (dev.hardware_class, device),
                    )
            if device in seen:
                db.execute(TOUCH_LAST_SEEN, (seen[device], device, seen[device]))
        if touch:
            db.executemany(TOUCH_LAST_SEEN, touch)

    def _class_of(self, device: str) -> str | None:
        cid = self._classes.get(device)
        if cid is None:  # looked up again until known: the birth may reach another worker
            dev = self.registry.device(device)
            cid = dev.hardware_class if dev else None
            if cid is not None:
                self._classes[device] = cid
        return cid
