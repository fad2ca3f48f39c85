"""The live fleet view: every device's retained state plus its latest telemetry window.

Devices publish a retained birth on ``{p}/dev/{id}/state`` (re-published after each telemetry
window with a ``last_window`` summary), so a fresh subscriber learns the whole fleet at once.
``watch`` prints events and telemetry as they arrive.

With a registry (:func:`registry_rows`) each device also gets its registry hardware class, the
status of its current variant against the targets (from the class's telemetry roll-up of that
variant) and the optimizer's last decision for the class.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.wire.topics import FLEET_KINDS, ParsedTopic, host_subscriptions, parse_topic
from deploy.mqtt import BrokerAddress, connect

if TYPE_CHECKING:
    from deploy.fleet.registry import Registry
    from deploy.fleet.registry_types import Device, Variant
    from deploy.loop.optimizer import EnoughRule
    from deploy.loop.targets import Targets


@dataclass
class DeviceView:
    device_id: str
    online: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] | None = None
    last_seen: float | None = None

    def row(self, now: float) -> dict[str, Any]:
        st = self.state
        model = st.get("model") or {}
        variant = model.get("variant") or {}
        hw = st.get("hardware") or {}
        accels = hw.get("accelerators") or []
        tel = self.telemetry or st.get("last_window") or {}
        lat = tel.get("latency_ms") or {}
        return {
            "device": self.device_id,
            "online": self.online,
            "board": hw.get("board_id") or hw.get("board"),
            "class": st.get("hardware_class"),
            "accelerator": ",".join(f"{a.get('kind')}:{a.get('device')}" for a in accels) or "-",
            "model": f"{model.get('name')}@{model.get('version')}" if model else "-",
            "variant": variant.get("recipe") or variant.get("dtype") or "-",
            "delegate": model.get("delegate") or "-",
            "p95_ms": lat.get("p95"),
            "throughput": tel.get("throughput"),
            "install": (st.get("install") or {}).get("state"),
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


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, int]] = COLUMNS) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

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


def target_status(
    registry: Registry,
    device: Device,
    variant: Variant | None,
    targets: Targets | None,
    rule: EnoughRule | None = None,
) -> tuple[str, list[str]]:
    """(status, missed metrics) of the device's current variant on its class:
    ``meets``, ``misses: <what>``, ``measuring (<why>)``, or ``-`` when unknown.

    The variant's size and host accuracy drop are checked at once; device metrics (p95, memory,
    energy) only once the class's roll-up of the variant is enough to judge."""
    from deploy.loop.candidates import accuracy_drop, float_accuracy
    from deploy.loop.optimizer import EnoughRule, enough_telemetry

    if targets is None or variant is None or not device.hardware_class:
        return "-", []
    ct = targets.for_class(device.hardware_class)
    if not ct.set_metrics():
        return "no targets", []
    row = registry.model(variant.model)
    facc = float_accuracy(registry.variants_for(variant.model), row.float_metrics if row else {})
    drop, _basis = accuracy_drop(variant, facc)
    static = ct.check({"size_mb": variant.size_mb, "accuracy_drop": drop})
    stats = registry.class_stats(device.hardware_class, variant.id)
    enough, why = enough_telemetry(stats, rule or EnoughRule())
    missed = static + (ct.check(stats.metrics()) if enough else [])
    if missed:
        return "misses: " + "; ".join(m.describe() for m in missed), [m.metric for m in missed]
    if not enough and any(m in ct.set_metrics() for m in stats.metrics()):
        return f"measuring ({why})", []
    unknown = ct.unknown(stats.metrics() | {"size_mb": variant.size_mb, "accuracy_drop": drop})
    return "meets" + (f" ({', '.join(unknown)} not measured)" if unknown else ""), []


def registry_rows(
    registry: Registry, targets: Targets | None = None, rule: EnoughRule | None = None
) -> list[dict[str, Any]]:
    """One row per registry device: the live-view columns from its stored state, plus
    ``class`` (registry class id), ``targets`` / ``missed`` and ``optimizer`` (the last
    decision for the device's model on its class: action and recipe)."""
    now = time.time()
    rows = []
    for d in registry.devices():
        view = DeviceView(d.id, d.online, dict(d.state), None, d.last_seen)
        row = view.row(now)
        sha = ((d.state.get("model") or {}).get("sha256")) or None
        variant = registry.variant_by_sha(str(sha)) if sha else None
        status, missed = target_status(registry, d, variant, targets, rule)
        optimizer = "-"
        model = variant.model if variant else (d.state.get("model") or {}).get("name")
        if model and d.hardware_class:
            decisions = registry.decisions(str(model), d.hardware_class)
            if decisions:
                last = decisions[-1]
                chosen = registry.variant(last.variant) if last.variant else None
                optimizer = f"{last.action} {chosen.recipe if chosen else ''}".strip()
        row |= {
            "class": d.hardware_class,
            "model": model or "-",
            "variant": variant.recipe if variant else row["variant"],
            "variant_id": variant.id if variant else None,
            "targets": status,
            "missed": missed,
            "optimizer": optimizer,
        }
        rows.append(row)
    return rows


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
