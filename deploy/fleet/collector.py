"""Host worker: every device's state, telemetry and events into the registry.

Subscribes to ``{p}/dev/+/{state,telemetry,events}`` (as an MQTT5 shared subscription when a
``share_group`` is given, so several host workers split the load) and applies each message on
its own thread: births and deaths update the device row (and its hardware class), telemetry
windows are stored once per (device, seq), events are kept in memory for the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any

from agent.errors import EdgeloopError
from agent.mqtt.types import IncomingMessage
from agent.wire.topics import FLEET_KINDS, host_subscriptions
from deploy.fleet.inbound import read_message
from deploy.fleet.registry import Registry
from deploy.mqtt import BrokerAddress, connect

log = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        registry: Registry,
        broker: BrokerAddress,
        *,
        prefix: str = "edgeloop",
        share_group: str | None = None,
    ) -> None:
        self.registry = registry
        self.prefix = prefix
        self.inbox: queue.Queue[IncomingMessage | None] = queue.Queue()
        self.events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=10_000)
        self.telemetry_stored = 0
        self.duplicates = 0
        self.skipped = 0
        topics = host_subscriptions(prefix, share_group or None, FLEET_KINDS)
        self.transport = broker.client("collector", topics, self.inbox.put)
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._idle = threading.Event()

    def start(self) -> Collector:
        self._thread.start()
        try:
            connect(self.transport, "the collector cannot connect to the broker")
        except EdgeloopError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.transport.stop(final=None)
        self.inbox.put(None)
        self._thread.join(10)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every message received so far has been applied."""
        self._idle.clear()
        self.inbox.put(IncomingMessage("", b"", 0, False))  # a marker the thread answers
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            msg = self.inbox.get()
            if msg is None:
                return
            if not msg.topic:
                self._idle.set()
                continue
            try:
                self.apply(msg)
            except (EdgeloopError, ValueError) as exc:
                log.warning("dropped a message on %s: %s", msg.topic, exc)
            except Exception:
                log.exception("collector failed on %s", msg.topic)

    def apply(self, msg: IncomingMessage) -> None:
        """Apply one message; ProtocolError for a malformed one (it touches no row)."""
        parsed, body = read_message(msg, self.prefix)
        device = parsed.device_id
        if parsed.kind == "state":
            self.registry.upsert_device_from_state(device, body)
        elif parsed.kind == "telemetry":
            if self.registry.device(device) is None:
                return  # no birth seen yet: its class is unknown (the birth is retained)
            if body.get("trial") or body.get("warmup"):
                self.skipped += 1  # the switch and the gate's own traffic are not the model's
                return
            if self.registry.record_telemetry(device, body):
                self.telemetry_stored += 1
            else:
                self.duplicates += 1
        elif parsed.kind == "events":
            self.events.append((device, body))
