"""A registry as 5,000 simulated devices leave it: births and telemetry windows made by the
simulator's own device code (deploy.sim.device), stored through the registry's own calls, for
the fleet view's test and benchmark. Two classes, devices on the digits fp32 or int8 variant,
a few offline and a few silent (stale)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.wire.messages import ModelRef, State
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.sim.device import SimDevice
from deploy.sim.profile import SimClass
from tests import rollout_fleet as rf

CLASSES = (SimClass.parse("rpi4b-cpu/ai-edge-litert"), SimClass("rpi5-cpu", "ai-edge-litert",
           p50_ms=8.0))  # fmt: skip
TARGETS = 'model = "digits"\n[targets]\nmax_accuracy_drop = 1.0\n[class."rpi4b-cpu"]\np95_ms = 12\n'


def fill(registry: Registry, where: Path, n: int, windows: int) -> tuple[Variant, Variant]:
    """``n`` devices, ``windows`` windows each; every 10th on fp32, every 50th offline, every
    70th silent for an hour."""
    old, new = rf.add_variants(registry, where)
    now = time.time()
    for start in range(0, n, 500):
        with registry.transaction():
            for i in range(start, min(n, start + 500)):
                v = old if i % 10 == 0 else new
                ref = ModelRef.from_obj(rf.serving(v), "model")
                dev = SimDevice(f"sim-{i:05d}", CLASSES[i % 2], {}, current=ref, window_s=10.0)
                silent = 3600.0 if i % 70 == 0 else 0.0
                registry.upsert_device_from_state(
                    dev.device_id, json.loads(dev.birth().payload), now=now - silent
                )
                for k in range(windows):
                    t = now - silent - 10.0 * (windows - k)
                    registry.record_telemetry(dev.device_id, json.loads(dev.window(t).payload))
                if i % 50 == 0:
                    registry.upsert_device_from_state(
                        dev.device_id, json.loads(State.offline("lost").to_json())
                    )
    return old, new
