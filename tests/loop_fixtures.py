"""A small real fleet for the closed-loop end-to-end tests (tests/test_loop_e2e.py).

One Mosquitto, real agents as subprocesses presenting the hardware classes captured under
deploy/data/hwtrees (each with its own TOML config: threads, load generator, health gates),
and the host side: a :class:`deploy.fleet.registry.Registry` file, a
:class:`deploy.fleet.collector.Collector`
and a :class:`deploy.fleet.rollout.Deployer`, which :meth:`Host.restart` closes and reopens as a
restarted host process would. An :class:`tests.agent_proc.Observer` records every state,
telemetry, event and deploy command of the fleet for the whole module, so a test can check
what the devices really did, not only what the registry says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy.fleet.collector import Collector
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.fleet.rollout import Deployer
from deploy.keys import init_keys, load_private
from deploy.mqtt import BrokerAddress
from tests.agent_proc import REPO, AgentProcess, Observer, wait_for
from tests.broker import Broker

DATA = REPO / "deploy" / "data"
DIGITSNET = DATA / "digitsnet"
DIGITS_DATA = DIGITSNET / "digits_data.npz"
MODEL = "digits"
# Trial gates sent with every deploy: short, so a push takes a few seconds.
GATES = {"min_inferences": 30, "min_seconds": 0.5}
TELEMETRY_S = 0.5
LOAD_HZ = 40.0


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    hw_tree: str  # a directory under deploy/data/hwtrees
    threads: int = 1
    health: Mapping[str, Any] = field(default_factory=dict)  # extra [health] keys
    deploy_float: bool = True  # the fleet pushes the float model to it at start


def agent_config(spec: DeviceSpec, path: Path) -> Path:
    """The device's own config file (the command line adds broker, ids and directories)."""
    lines = [
        f'hw_root = "{DATA / "hwtrees" / spec.hw_tree}"',
        f"[runtime]\nthreads = {spec.threads}",
        f"[loadgen]\nrate_hz = {LOAD_HZ}",
        "[health]",
        *(f"{k} = {json.dumps(v)}" for k, v in spec.health.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Host:
    """The host process's parts on one registry file; :meth:`restart` reopens them."""

    def __init__(self, path: Path, broker: Broker, key: Any, model: str = MODEL) -> None:
        self.path, self.model = path, model
        self.address = BrokerAddress(broker.host, broker.port)
        self.key = key
        self.registry: Registry | None = None
        self.collector: Collector | None = None
        self.deployer: Deployer | None = None

    def start(self) -> Host:
        self.registry = Registry(self.path)
        self.collector = Collector(self.registry, self.address).start()
        self.deployer = Deployer(
            self.registry, self.address, self.key, self.model, gates=GATES, timeout_s=90
        )
        return self

    def stop(self) -> None:
        if self.collector is not None:
            self.collector.stop()
        if self.registry is not None:
            self.registry.close()
        self.registry = self.collector = self.deployer = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def reg(self) -> Registry:
        assert self.registry is not None
        return self.registry

    @property
    def dep(self) -> Deployer:
        assert self.deployer is not None
        return self.deployer


@dataclass
class Fleet:
    broker: Broker
    workdir: Path
    specs: tuple[DeviceSpec, ...]
    agents: dict[str, AgentProcess]
    host: Host
    variants: list[Variant]
    observer: Observer

    def variant(self, recipe: str) -> Variant:
        return next(v for v in self.variants if v.recipe == recipe and v.available)

    def class_of(self, device: str) -> str:
        d = self.host.reg.device(device)
        assert d is not None and d.hardware_class, f"{device} has no class yet"
        return d.hardware_class

    def retained_model(self, device: str) -> dict[str, Any]:
        """The model in the device's retained state, as a fresh subscriber sees it."""
        state = self.agents[device].state(timeout=5.0) or {}
        model: dict[str, Any] = state.get("model") or {}
        return model

    def messages(self, suffix: str) -> list[tuple[str, dict[str, Any]]]:
        """(device, body) of every message observed so far on topics ending with ``suffix``."""
        self.observer.wait_message(lambda m: False, 0.05, "", raise_=False)  # drain the queue
        out = []
        for m in self.observer.messages:
            if m.topic.endswith(suffix) and m.payload:
                try:
                    body = json.loads(m.payload)
                except ValueError:
                    continue
                out.append((m.topic.split("/")[2], body))
        return out

    def deploy_commands(self) -> list[tuple[str, dict[str, Any]]]:
        """(device, manifest) of every deploy command sent to the fleet so far."""
        return [
            (dev, body["args"]["manifest"]["manifest"])
            for dev, body in self.messages("/cmd/deploy")
        ]


def convert_source(
    registry: Registry, source: Path, out_dir: Path, recipes: Sequence[str]
) -> list[Variant]:
    """Every recipe of a digits ``source`` into the registry (cached by content)."""
    from deploy.loop.driver import prepare_variants

    return prepare_variants(
        registry, MODEL, source, out_dir, recipes=recipes,
        calibration=DIGITS_DATA, validation=DIGITS_DATA,
    )  # fmt: skip


@contextmanager
def running_fleet(
    workdir: Path,
    specs: Sequence[DeviceSpec],
    recipes: Sequence[str],
    source: Path = DIGITSNET / "digitsnet.keras",
    *,
    model: str = MODEL,
    convert: Callable[[Registry, Path, Sequence[str]], list[Variant]] | None = None,
) -> Iterator[Fleet]:
    """Broker, agents, host; every recipe of ``source`` (a Keras model of the digits) in the
    registry and its float model committed on every ``deploy_float`` device. ``model`` and
    ``convert`` (registry, out_dir, recipes): another task than the digits."""
    broker = Broker(workdir / "broker").start()
    keys = workdir / "keys"
    init_keys(keys)
    agents: dict[str, AgentProcess] = {}
    host = Host(workdir / "registry.sqlite", broker, load_private(keys), model)
    failures: list[str] = []
    try:
        for spec in specs:
            cfg = agent_config(spec, workdir / f"{spec.device_id}.toml")
            agents[spec.device_id] = AgentProcess(
                broker, workdir / "devices" / spec.device_id, keys / "edgeloop.pub",
                device_id=spec.device_id, telemetry_interval=TELEMETRY_S,
                extra_args=["--config", str(cfg)],
            ).start(wait_online=False)  # fmt: skip
        host.start()
        out = workdir / "variants"
        variants = (
            convert(host.reg, out, recipes) if convert else
            convert_source(host.reg, source, out, recipes)
        )  # fmt: skip
        for agent in agents.values():
            agent.wait_online(60)
            agent.wait_ready()
        ids = set(agents)
        wait_for(lambda: ids <= {d.id for d in host.reg.devices() if d.online and
                                 d.hardware_class}, 30, "every device in the registry")  # fmt: skip
        fp32 = next(v for v in variants if v.recipe == "fp32" and v.available)
        first = [s.device_id for s in specs if s.deploy_float]
        with ThreadPoolExecutor(len(first)) as pool:
            pushed = list(pool.map(lambda d: host.dep.push(d, fp32), first))
        bad = {d: r.message for d, r in zip(first, pushed, strict=True) if not r.ok}
        assert not bad, f"float deploy failed: {bad}"
        topics = [f"edgeloop/dev/+/{k}" for k in ("state", "telemetry", "events", "cmd/deploy")]
        with Observer(broker, topics) as observer:
            yield Fleet(broker, workdir, tuple(specs), agents, host, variants, observer)
    finally:
        host.stop()
        for agent in agents.values():
            if agent.proc is not None:
                rc = agent.stop()
                if rc != 0:
                    failures.append(f"{agent.device_id} exited {rc}:\n{agent.log()}")
        broker.stop()
    assert not failures, "\n".join(failures)


def held_out_accuracy(model: Path) -> float:
    """Top-1 accuracy of ``model`` on the held-out digits, run with the agent's own runtime."""
    from agent.runtime import load_model

    data = np.load(DIGITS_DATA)
    x, labels = data["x"], data["labels"]
    interp = load_model(model, "cpu", threads=1).interpreter
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtype = np.dtype(inp["dtype"])
    scale, zero = inp["quantization"]
    right = 0
    for i in range(len(x)):
        sample = x[i : i + 1]
        if dtype.kind != "f" and scale:
            info = np.iinfo(dtype)
            sample = np.clip(np.round(sample / scale + zero), info.min, info.max)
        interp.set_tensor(inp["index"], sample.astype(dtype))
        interp.invoke()
        right += int(np.argmax(interp.get_tensor(out["index"])[0]) == labels[i])
    return right / len(x)
