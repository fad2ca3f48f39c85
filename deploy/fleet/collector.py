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

from agent.errors import EdgeloopError, ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.wire.codec import (
    MAX_EVENT_BYTES,
    MAX_STATE_BYTES,
    MAX_TELEMETRY_BYTES,
    parse_json_object,
)
from agent.wire.topics import FLEET_KINDS, host_subscriptions, parse_topic
from deploy.fleet.registry import Registry
from deploy.mqtt import BrokerAddress, connect

log = logging.getLogger(__name__)

_LIMITS = {"state": MAX_STATE_BYTES, "telemetry": MAX_TELEMETRY_BYTES}
_INT64 = 2**63 - 1


def _check_ints(topic: str, body: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Integers the registry stores must fit its 64-bit columns."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not -_INT64 <= value <= _INT64:
            raise ProtocolError(f"{topic}: {key} {value} does not fit 64 bits")


def _check_state(topic: str, body: dict[str, Any]) -> None:
    """The parts of a birth the registry reads have the types it reads them as."""
    hw, rt = body.get("hardware"), body.get("runtime")
    for name, value in (("hardware", hw), ("runtime", rt)):
        if value is not None and not isinstance(value, dict):
            raise ProtocolError(f"{topic}: {name} must be an object or null")
    strings = [("hardware_class", body.get("hardware_class"))]
    strings += [(f"hardware.{k}", (hw or {}).get(k)) for k in ("board_id", "board_family", "board")]
    strings += [(f"runtime.{k}", (rt or {}).get(k)) for k in ("name", "version")]
    for name, value in strings:
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"{topic}: {name} must be a string or null")
    accels = (hw or {}).get("accelerators")
    if accels is not None and (
        not isinstance(accels, list) or not all(isinstance(a, dict) for a in accels)
    ):
        raise ProtocolError(f"{topic}: hardware.accelerators must be a list of objects")


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
        parsed = parse_topic(msg.topic, self.prefix)
        limit = _LIMITS.get(parsed.kind, MAX_EVENT_BYTES)
        body = (
            parse_json_object(msg.payload, max_bytes=limit, what=msg.topic) if msg.payload else {}
        )
        if not isinstance(body, dict):
            raise ProtocolError(f"{msg.topic}: payload is not a JSON object")
        device = parsed.device_id
        if parsed.kind == "state":
            _check_state(msg.topic, body)
            self.registry.upsert_device_from_state(device, body)
        elif parsed.kind == "telemetry":
            _check_ints(msg.topic, body, ("seq", "inferences", "errors", "throttled"))
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
