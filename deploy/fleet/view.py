"""The live fleet view: every device's retained state plus its latest telemetry window.

Devices publish a retained birth on ``{p}/dev/{id}/state`` (re-published after each telemetry
window with a ``last_window`` summary), so a fresh subscriber learns the whole fleet at once.
``watch`` prints events and telemetry as they arrive.

The same rows from the registry, with each device's status against its targets and the
optimizer's last decision, are built by :func:`deploy.loop.status.registry_rows`.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.wire.topics import FLEET_KINDS, ParsedTopic, host_subscriptions, parse_topic
from deploy.fleet.registry_types import parse_state
from deploy.mqtt import BrokerAddress, connect


@dataclass
class DeviceView:
    device_id: str
    online: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] | None = None
    last_seen: float | None = None

    def row(self, now: float) -> dict[str, Any]:
        st = parse_state(self.state, self.online)
        model = st.model
        variant = model.variant if model else {}
        hw = st.hardware or {}
        accels = hw.get("accelerators") or []
        tel = self.telemetry or st.last_window or {}
        lat = tel.get("latency_ms") or {}
        return {
            "device": self.device_id,
            "online": self.online,
            "board": hw.get("board_id") or hw.get("board"),
            "class": st.hardware_class,
            "accelerator": ",".join(f"{a.get('kind')}:{a.get('device')}" for a in accels) or "-",
            "model": f"{model.name}@{model.version}" if model else "-",
            "variant": variant.get("recipe") or variant.get("dtype") or "-",
            "delegate": (model.delegate if model else None) or "-",
            "p95_ms": lat.get("p95"),
            "throughput": tel.get("throughput"),
            "install": st.install_state,
            "last_seen_s": None if self.last_seen is None else round(now - self.last_seen, 1),
        }


class FleetWatcher:
    """Subscribes to every device's state, telemetry and events under a prefix."""

    def __init__(self, broker: BrokerAddress, prefix: str = "edgeloop") -> None:
        self.prefix = prefix
        self.devices: dict[str, DeviceView] = {}
        self.inbox: queue.Queue[IncomingMessage] = queue.Queue()
        topics = host_subscriptions(prefix, kinds=FLEET_KINDS)
        self.transport = broker.client("fleet", topics, self.inbox.put)

    @contextmanager
    def running(self) -> Iterator[FleetWatcher]:
        connect(self.transport)
        try:
            yield self
        finally:
            self.transport.stop(final=None)

    def pump(
        self,
        seconds: float,
        on_message: Callable[[ParsedTopic, dict[str, Any]], None] | None = None,
    ) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = self.inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            parsed, body = self.ingest(msg)
            if parsed is not None and on_message is not None:
                on_message(parsed, body)

    def ingest(self, msg: IncomingMessage) -> tuple[ParsedTopic | None, dict[str, Any]]:
        try:
            parsed = parse_topic(msg.topic, self.prefix)
            body = json.loads(msg.payload.decode("utf-8")) if msg.payload else {}
        except (ProtocolError, UnicodeDecodeError, json.JSONDecodeError):
            return None, {}
        if not isinstance(body, dict):
            return None, {}
        view = self.devices.setdefault(parsed.device_id, DeviceView(parsed.device_id))
        if parsed.kind == "state":
            view.online = bool(body.get("online"))
            if view.online:
                view.state = body
            else:
                view.state = view.state | {"reason": body.get("reason")}
            ts = body.get("ts")
            view.last_seen = float(ts) if isinstance(ts, int | float) else view.last_seen
        elif parsed.kind == "telemetry":
            view.telemetry = body
            view.last_seen = time.time()
        return parsed, body

    def rows(self) -> list[dict[str, Any]]:
        now = time.time()
        return [v.row(now) for _k, v in sorted(self.devices.items())]


COLUMNS = (
    ("device", 12),
    ("online", 6),
    ("class", 22),
    ("accelerator", 14),
    ("model", 18),
    ("variant", 12),
    ("delegate", 8),
    ("p95_ms", 8),
    ("throughput", 10),
    ("install", 9),
    ("last_seen_s", 11),
)


def cell(value: Any) -> str:
    """One value as a table shows it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, int]] = COLUMNS) -> str:
    header = "  ".join(name.ljust(width) for name, width in columns)
    lines = [header, "  ".join("-" * width for _n, width in columns)]
    for row in rows:
        lines.append(
            "  ".join(
                cell(row.get(name)).ljust(width)[: max(width, 1) + 40] for name, width in columns
            )
        )
    if not rows:
        lines.append("(no devices seen)")
    return "\n".join(lines)


# ---- the registry's view: class, target status, optimizer state --------------------------------
REGISTRY_COLUMNS = (
    ("device", 12),
    ("online", 6),
    ("class", 30),
    ("model", 10),
    ("variant", 12),
    ("p95_ms", 8),
    ("targets", 40),
    ("optimizer", 22),
    ("last_seen_s", 11),
)


def merge_live(rows: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Registry rows updated with the live MQTT view (online, latency, last seen); devices
    only seen live are added as they are."""
    by_id = {r["device"]: r for r in live}
    out = []
    for r in rows:
        lv = by_id.pop(r["device"], None)
        keys = ("online", "p95_ms", "throughput", "install", "last_seen_s")
        out.append(r if lv is None else r | {k: lv[k] for k in keys})
    return out + list(by_id.values())
