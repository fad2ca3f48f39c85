"""What the fleet rollout test and benchmark share: a registry with two variants of the digits
model, simulated devices that start on the older one, the host's collector filling the registry
from their births, and an observer on the broker that records every deploy command a device
receives (who, which artifact, which release, when it was signed)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.wire.messages import Command
from deploy.fleet.collector import Collector
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import ModelRow, Variant
from deploy.fleet.rollout import Deployer
from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.sim.fleet import FleetSpec
from deploy.sim.profile import Rates
from tests import mqtt_util

MODELS = Path(__file__).resolve().parent / "models"
CLASS = "rpi4b-cpu/ai-edge-litert"
MODEL = "digits"


def add_variants(registry: Registry, where: Path) -> tuple[Variant, Variant]:
    """(old, new): the fp32 model the devices serve at start, the int8 one rolled out."""
    where.mkdir(parents=True, exist_ok=True)
    registry.add_model(ModelRow(MODEL, str(MODELS / "digits.keras"), "0" * 64))
    out = []
    for recipe in ("fp32", "int8"):
        path = where / f"digits_{recipe}.tflite"
        shutil.copyfile(MODELS / f"digits_{recipe}.tflite", path)
        data = path.read_bytes()
        v = Variant(
            f"digits-{recipe}", MODEL, recipe, str(path), hashlib.sha256(data).hexdigest(),
            len(data), recipe,
        )  # fmt: skip
        registry.add_variant(v)
        out.append(v)
    return out[0], out[1]


def serving(v: Variant, release: int = 1) -> dict[str, Any]:
    """The ModelRef (as JSON) of a device that serves ``v``."""
    variant = {"recipe": v.recipe, "dtype": v.quantization, "delegate": "auto"}
    return {"sha256": v.sha256, "name": MODEL, "version": "1", "release": release,
            "variant": variant}  # fmt: skip


def fleet_spec(port: int, n: int, keys: Path, old: Variant, rates: dict[str, float]) -> FleetSpec:
    """``n`` devices of one class, telemetry every 30 s, trusting ``keys``, serving ``old``."""
    return FleetSpec(
        "127.0.0.1", port, 0, n, n, classes=(CLASS,), window_s=30.0,
        trust=(str(keys / "edgeloop.pub"),), rates=rates, model=serving(old),
    )  # fmt: skip


def canary_commits_seed(new: Variant, rate: float, release: int = 2) -> int:
    """A seed under which the canary (the first device) commits ``new`` at ``install_fail``
    ``rate``: the abort then happens in a wave, with devices already moved."""
    for seed in range(100):
        if Rates(install_fail=rate, seed=seed).fate("sim-00000", new.sha256, release) == "commit":
            return seed
    raise AssertionError("no seed lets the canary commit")


@dataclass
class Host:
    registry: Registry
    collector: Collector
    deployer: Deployer


def start_host(registry: Registry, port: int, keys: Path, n: int, timeout: float) -> Host:
    """The collector on the broker, waiting until ``n`` devices are online in the registry."""
    address = BrokerAddress("127.0.0.1", port)
    collector = Collector(registry, address).start()

    def online() -> bool:
        collector.drain(2.0)
        return sum(d.online for d in registry.devices(CLASS)) >= n

    mqtt_util.wait_until(online, timeout, f"{n} devices online in the registry", interval=0.2)
    deployer = Deployer(registry, address, load_private(keys), MODEL, timeout_s=60.0)
    return Host(registry, collector, deployer)


def deploy_observer(port: int) -> mqtt_util.Collector:
    """Every deploy command as the devices receive it."""
    return mqtt_util.Collector("127.0.0.1", port, ["edgeloop/dev/+/cmd/deploy"]).start()


@dataclass(frozen=True)
class SeenDeploy:
    device: str
    sha256: str
    release: int
    ts: float  # when the host made the command


def deploys_seen(observer: mqtt_util.Collector) -> list[SeenDeploy]:
    with observer.lock:
        messages = list(observer.messages)
    out = []
    for m in messages:
        cmd = Command.from_json(m.payload, "deploy")
        body = cmd.args["manifest"]["manifest"]  # the signed manifest's fields
        device = m.topic.split("/")[2]
        out.append(SeenDeploy(device, str(body["sha256"]), int(body["release"]), cmd.ts or 0.0))
    return out


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
