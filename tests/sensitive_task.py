"""The loop on the quantization-sensitive task with a real agent: shared by
tests/test_loop_sensitive.py (which asserts) and tests/bench_loop.py part (c) (which reports).

fusionnet: full-int8 PTQ loses ~88 points, so the accuracy budget (1 point) rules it out. The
p95 target is set from the device's own measurement of the float model: the agent's signed
``bench`` command over MQTT, then its serving telemetry judged like the loop judges it;
``TARGET_FACTOR`` x the float p95, which float misses and the int8 kernels meet on this machine
(the agent's bench here, fusionnet p95: fp32 0.018 ms, int8 0.009, selective-k1 0.010, qat
0.009; dynamic-int8 0.009, but the loop's prior for dynamic-range int8 is 1.11x float, so it is
not predicted to help). The PTQ menu cannot meet both targets, so the loop generates candidates
on demand (the selective search, then QAT) and should ship one within 1 point of float.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.loop.driver import ClassRun
from tests.agent_proc import wait_for
from tests.loop_fixtures import DATA, DeviceSpec, Fleet, running_fleet

FUSION = DATA / "fusionnet"
MODEL = "fusion"
PTQ = ("fp32", "fp16", "dynamic-int8", "int8", "int16x8")
TARGET_FACTOR = 0.75
BUDGET = 1.0
MAX_TRIALS = 3
# A busy board: at the fixture's 40 Hz each invoke of this 0.02 ms model starts with cold caches
# and its p95 is mostly that; at LOAD_HZ the kernels' speed shows more.
LOAD_HZ = 400.0
DEVICE = "pi4-a"


def convert_fusionnet(registry: Registry, out_dir: Path, recipes: Sequence[str]) -> list[Variant]:
    from deploy.loop.driver import prepare_variants

    data = FUSION / "fusion_data.npz"
    return prepare_variants(registry, MODEL, FUSION / "fusionnet.keras", out_dir, recipes=recipes,
                            calibration=data, validation=data)  # fmt: skip


def device_command(fleet: Fleet, device: str, verb: str, args: dict[str, Any]) -> dict[str, Any]:
    """A signed command to the device; its final reply's data."""
    from deploy.command import build_command, send_command

    cmd = build_command(verb, device, args, fleet.host.key)
    reply = send_command(fleet.host.address, device, cmd, timeout_s=60, final=True)
    assert reply.status == "ok", reply
    return reply.data


def device_bench(fleet: Fleet, device: str) -> dict[str, float]:
    """p50/p95 (ms) of the agent's own benchmark of the model it serves (signed bench)."""
    lat = device_command(fleet, device, "bench", {"runs": 500})["result"]["latency_ms"]
    return {"p50": float(lat["p50"]), "p95": float(lat["p95"])}


@dataclass
class SensitiveRun:
    run: ClassRun
    class_id: str
    target_ms: float
    float_p95_ms: float  # serving telemetry before the loop
    float_bench: dict[str, float]
    fp32: Variant
    chosen: Variant | None = None
    chosen_p95_ms: float | None = None  # serving telemetry in the loop
    chosen_bench: dict[str, float] = field(default_factory=dict)
    loop_s: float = 0.0  # loop start -> the chosen variant committed and promoted
    generation_s: float = 0.0  # host seconds spent generating candidates
    serving_sha: str | None = None
    log: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        c, f = self.chosen, self.fp32
        lost = None if not c or c.accuracy is None or f.accuracy is None else (
            round((f.accuracy - c.accuracy) * 100, 2))  # fmt: skip
        speed = self.float_p95_ms / self.chosen_p95_ms if self.chosen_p95_ms else None
        bench = (self.float_bench["p50"] / self.chosen_bench["p50"]
                 if self.chosen_bench else None)  # fmt: skip
        return {
            "state": self.run.state, "class": self.class_id, "trials": self.run.trials,
            "chosen": c.recipe if c else None, "target_p95_ms": self.target_ms,
            "float_p95_ms": self.float_p95_ms, "chosen_p95_ms": self.chosen_p95_ms,
            "float_bench": self.float_bench, "chosen_bench": self.chosen_bench,
            "accuracy_float": f.accuracy, "accuracy_chosen": c.accuracy if c else None,
            "accuracy_lost_points": lost,
            "speedup_p95_telemetry": None if speed is None else round(speed, 2),
            "speedup_p50_bench": None if bench is None else round(bench, 2),
            "loop_wall_s": round(self.loop_s, 1), "generation_host_s": self.generation_s,
            "decisions": self.log,
        }  # fmt: skip


def run_sensitive(workdir: Path, *, factor: float = TARGET_FACTOR) -> SensitiveRun:
    """One agent (captured Pi 4 tree, 1 thread), fusionnet's PTQ menu, the loop with a
    Generator (selective search, QAT on fusion_train.npz)."""
    from deploy.loop.driver import ClosedLoop, LoopSettings
    from deploy.loop.generate import Generator
    from deploy.loop.optimizer import EnoughRule, enough_telemetry
    from deploy.loop.targets import parse_targets

    spec = DeviceSpec(DEVICE, "rpi4b", threads=1)
    with running_fleet(workdir, [spec], PTQ, model=MODEL, convert=convert_fusionnet) as fleet:
        reg, cid = fleet.host.reg, fleet.class_of(DEVICE)
        fp32 = fleet.variant("fp32")
        device_command(fleet, DEVICE, "config", {"loadgen": {"rate_hz": LOAD_HZ}})
        float_bench = device_bench(fleet, DEVICE)
        # the float p95 the loop will see: serving windows after the bench (which ran beside
        # the serving thread) at the new rate, judged like the loop judges
        since = time.time()
        rule = EnoughRule(min_windows=6, min_inferences=300)
        wait_for(lambda: enough_telemetry(reg.class_stats(cid, fp32.id, since), rule)[0], 60,
                 "enough fp32 telemetry")  # fmt: skip
        float_p95 = reg.class_stats(cid, fp32.id, since).p95_ms
        assert float_p95 is not None
        target = round(factor * float_p95, 5)
        targets = parse_targets(
            {"model": MODEL, "targets": {"p95_ms": target, "max_accuracy_drop": BUDGET}}
        )
        data = FUSION / "fusion_data.npz"
        gen = Generator(reg, MODEL, FUSION / "fusionnet.keras", workdir / "variants",
                        calibration=data, validation=data, train=FUSION / "fusion_train.npz",
                        max_k=4)  # fmt: skip
        start = time.time()
        settings = LoopSettings(poll_s=0.3, max_trials=MAX_TRIALS, timeout_s=420, rule=rule,
                                parallel_classes=False, since=start)  # fmt: skip
        (run,) = ClosedLoop(reg, fleet.host.dep, targets, settings, generator=gen).run([cid])
        out = SensitiveRun(run, cid, target, float_p95, float_bench, fp32)
        out.loop_s = time.time() - start
        out.log = [f"{d.action}: {d.reason}" for d in run.decisions]
        out.generation_s = round(sum(g.host_s for g in run.generated), 2)
        out.chosen = reg.variant(run.final_variant or "")
        if out.chosen is not None:
            out.chosen_p95_ms = reg.class_stats(cid, out.chosen.id, start).p95_ms
            out.serving_sha = fleet.retained_model(DEVICE).get("sha256")
            out.chosen_bench = device_bench(fleet, DEVICE)
        return out
