"""The simulated devices of one process: their connections, their schedule, their counters.

``python -m deploy.sim.fleet SPEC_JSON`` runs one worker (what :mod:`deploy.sim.launch` starts)
and prints one JSON line of counters every ``stats_s`` and a last one with ``"final": true``.
Windows are spread evenly over the window period (device ``i`` of ``N`` publishes at phase
``i/N``), so 5,000 devices at 1 s make a steady 5,000 windows/s rather than bursts.
"""

from __future__ import annotations

import heapq
import json
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from agent.wire.messages import ModelRef, State
from agent.wire.trust import load_trust_keys
from deploy.sim.device import Out, SimDevice
from deploy.sim.mux import Link, Mux
from deploy.sim.profile import Rates, SimClass, assign_classes, parse_classes

CONNECTS_PER_TURN = 50
TICK_S = 0.2


@dataclass(frozen=True)
class FleetSpec:
    """What one worker process simulates (JSON on its command line)."""

    host: str
    port: int
    first: int  # index of this worker's first device in the whole fleet
    count: int
    total: int  # devices in the whole fleet (for the schedule's phases)
    classes: tuple[str, ...] = ("rpi4b-cpu/ai-edge-litert",)
    window_s: float = 10.0
    prefix: str = "edgeloop"
    id_prefix: str = "sim-"
    trust: tuple[str, ...] = ()
    rates: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    stats_s: float = 1.0
    telemetry: bool = True
    model: dict[str, Any] | None = None  # the model every device serves at start (a ModelRef)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FleetSpec:
        d = json.loads(text)
        d["classes"], d["trust"] = tuple(d["classes"]), tuple(d["trust"])
        return cls(**d)

    def device_id(self, i: int) -> str:
        return f"{self.id_prefix}{i:05d}"


class SimFleet:
    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        trust = load_trust_keys(spec.trust) if spec.trust else {}
        rates = Rates(**spec.rates)  # type: ignore[arg-type]
        weighted = parse_classes(",".join(spec.classes))
        classes = assign_classes(
            [SimClass.parse(c) for c, _w in weighted], spec.total, [w for _c, w in weighted]
        )
        first_model = ModelRef.from_obj(spec.model, "model") if spec.model else None
        self.mux = Mux(spec.host, spec.port)
        self.devices: list[SimDevice] = []
        self.links: list[Link] = []
        self._heap: list[tuple[float, int]] = []
        t0 = time.monotonic()
        for k in range(spec.count):
            i = spec.first + k
            dev = SimDevice(
                spec.device_id(i),
                classes[i],
                trust,
                rates,
                spec.prefix,
                spec.window_s,
                current=first_model,
            )
            link = self.mux.add(
                dev.device_id,
                dev.will(),
                dev.topics.device_subscriptions(),
                self._on_connect,
                self._on_message,
            )
            self.devices.append(dev)
            self.links.append(link)
            heapq.heappush(self._heap, (t0 + spec.window_s * (1 + i / spec.total), k))
        self._index = {id(link): k for k, link in enumerate(self.links)}
        self.windows = 0
        self.births = 0
        self.stop = threading.Event()

    # ---- callbacks (the mux thread) ----------------------------------------------------------
    def _on_connect(self, link: Link) -> None:
        self.births += 1
        self._send(link, [self.devices[self._index[id(link)]].birth()])

    def _on_message(self, link: Link, msg: mqtt.MQTTMessage) -> None:
        dev = self.devices[self._index[id(link)]]
        props = getattr(msg, "properties", None)
        rt = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        outs = dev.on_message(
            msg.topic,
            bytes(msg.payload),
            time.time(),
            rt,
            bytes(corr) if corr is not None else None,
        )
        self._send(link, outs)
        if dev.offline_until is not None:
            self.mux.drop(link, dev.offline_until - time.time())
            dev.offline_until = None

    def _send(self, link: Link, outs: list[Out]) -> None:
        for out in outs:
            self.mux.publish(link, out)

    # ---- the loop ------------------------------------------------------------------------------
    def connected(self) -> int:
        return sum(link.connected for link in self.links)

    def counters(self) -> dict[str, Any]:
        events: dict[str, int] = {}
        for dev in self.devices:
            for k, v in dev.counts.items():
                events[k] = events.get(k, 0) + v
        rss = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "devices": len(self.devices),
            "connected": self.connected(),
            "births": self.births,
            "windows": self.windows,
            "published": self.mux.published,
            "publish_errors": self.mux.publish_errors,
            "counts": events,
            "max_rss_mb": round(rss.ru_maxrss / 1024, 1),
            "cpu_s": round(rss.ru_utime + rss.ru_stime, 2),
        }

    def run(self, on_stats: Any = None) -> dict[str, Any]:
        spec = self.spec
        end = time.monotonic() + spec.duration_s if spec.duration_s else float("inf")
        next_stats = next_tick = 0.0
        while not self.stop.is_set() and time.monotonic() < end:
            now = time.monotonic()
            self.mux.connect_due(now, CONNECTS_PER_TURN)
            if spec.telemetry:
                self._windows_due(now)
            if now >= next_tick:
                next_tick = now + TICK_S
                wall = time.time()
                for dev, link in zip(self.devices, self.links, strict=True):
                    if dev.transfer is not None and link.connected:
                        self._send(link, dev.tick(wall))
            timeout = min(TICK_S, max(0.0, self._heap[0][0] - now)) if self._heap else TICK_S
            self.mux.run_once(timeout)
            if on_stats is not None and now >= next_stats:
                next_stats = now + spec.stats_s
                on_stats(self.counters())
        return self.counters()

    def _windows_due(self, now: float) -> None:
        wall = time.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, k = heapq.heappop(heap)
            dev, link = self.devices[k], self.links[k]
            if link.connected:
                self.mux.publish(link, dev.window(wall))
                self.windows += 1
            heapq.heappush(heap, (max(due + dev.window_s, now - dev.window_s), k))

    def close(self) -> None:
        """A clean stop, as the agent does: a retained "stopped" state, then DISCONNECT."""
        stopped = State.offline("stopped").to_json()
        for dev, link in zip(self.devices, self.links, strict=True):
            if link.connected:
                self.mux.publish(link, Out(dev.topics.state, stopped, 1, True))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            link.connected and link.client._out_messages for link in self.links
        ):
            self.mux.run_once(0.05)
        self.mux.close()


def main(argv: list[str] | None = None) -> int:
    spec = FleetSpec.from_json((argv or sys.argv[1:])[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * spec.count + 256)), hard))
    fleet = SimFleet(spec)
    signal.signal(signal.SIGTERM, lambda *_: fleet.stop.set())
    signal.signal(signal.SIGINT, lambda *_: fleet.stop.set())

    def emit(c: dict[str, Any]) -> None:
        print(json.dumps(c), flush=True)

    final = fleet.run(emit)
    fleet.close()
    emit(final | {"final": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
