"""The loop's decisions, driven through a real registry with simulated device telemetry.

Each scenario is a table: per recipe, the host accuracy and the latency the class's devices
really show. ``run_loop`` plays the host: decide, record, and when told to deploy, feed the
registry telemetry windows "measured" from the table, until promote or infeasible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import HardwareClass, ModelRow, Stats, Variant
from deploy.loop.driver import build_context, record
from deploy.loop.learning import Observation, Priors, similarity
from deploy.loop.optimizer import Decision, EnoughRule, decide, enough_telemetry, pareto_front
from deploy.loop.targets import parse_targets
from tests.records import telemetry

PI4 = "rpi4b-cpu/ai-edge-litert"
PI5 = "rpi5-cpu/ai-edge-litert"
FLOAT_ACC = 0.970
# recipe -> (host accuracy, size bytes)
ACCURACY = {"fp32": (0.970, 80_000), "fp16": (0.9695, 40_000), "int16x8": (0.968, 30_000),
            "dynamic-int8": (0.967, 22_000), "selective": (0.966, 30_000),
            "int8": (0.964, 21_000)}  # fmt: skip
# recipe -> p95 ms really measured on the tight class
SLOW_PI = {"fp32": 12.0, "fp16": 12.2, "int16x8": 20.0, "dynamic-int8": 13.5,
           "selective": 9.5, "int8": 4.5}  # fmt: skip


def vid(recipe: str) -> str:
    return f"digits-{recipe}"


def sha(recipe: str) -> str:
    return hashlib.sha256(vid(recipe).encode()).hexdigest()


def make_registry(path: Path, accuracy: dict[str, tuple[float, int]] = ACCURACY) -> Registry:
    reg = Registry(path)
    reg.add_model(ModelRow("digits", "/src/digits.keras", "f" * 64, {"accuracy": FLOAT_ACC}))
    for recipe, (acc, size) in accuracy.items():
        v = Variant(vid(recipe), "digits", recipe.removesuffix("-bad"), f"/v/{recipe}.tflite",
                    sha(recipe), size, recipe, accuracy=acc)  # fmt: skip
        reg.add_variant(v)
    return reg


@dataclass
class Device:
    id: str
    class_id: str
    truth: dict[str, float]  # recipe -> p95 ms
    seq: int = 0

    def feed(self, reg: Registry, variant: str, windows: int = 4, temp: float = 50.0) -> None:
        v = reg.variant(variant)
        assert v is not None
        p95 = self.truth[v.recipe]
        for _ in range(windows):
            self.seq += 1
            reg.record_telemetry(self.id, telemetry(
                self.seq, 1000.0 + self.seq, sha=v.sha256, p95=p95, temp_c=temp, throttled=None
            ))  # fmt: skip


def add_device(reg: Registry, device: Device) -> Device:
    reg.upsert_device(device.id, hardware_class=device.class_id)
    return device


def targets(by_class: dict[str, Any]) -> Any:
    return parse_targets({"targets": {"max_accuracy_drop": 1.0}, "class": by_class})


def run_loop(
    reg_path: Path, device: Device, tgt: Any, *, forced: tuple[str, ...] = (),
    reopen_each_step: bool = False, steps: int = 10,
) -> tuple[list[Decision], list[str]]:  # fmt: skip
    reg = Registry(reg_path)
    reg.upsert_device(device.id, hardware_class=device.class_id)
    current: str | None = None
    decisions: list[Decision] = []
    deployed: list[str] = []
    for _ in range(steps):
        d = decide(build_context(reg, "digits", device.class_id, tgt, current=current,
                                 forced=forced))  # fmt: skip
        record(reg, d, "digits", device.class_id)
        decisions.append(d)
        if d.action == "deploy" and d.variant:
            current = d.variant
            deployed.append(d.variant.removeprefix("digits-"))
            device.feed(reg, d.variant)
        elif d.action in ("promote", "infeasible"):
            break
        if reopen_each_step:  # the host restarts between steps: all state is in the registry
            reg.close()
            reg = Registry(reg_path)
    reg.close()
    return decisions, deployed


def test_class_missing_p95_with_float_converges_to_int8_within_three_trials(tmp_path):
    path = tmp_path / "r.db"
    make_registry(path).close()
    dev = Device("pi4-01", PI4, SLOW_PI)
    decisions, deployed = run_loop(path, dev, targets({"rpi4b-cpu": {"p95_ms": 8}}),
                                   reopen_each_step=True)  # fmt: skip
    assert deployed == ["fp32", "selective", "int8"]
    assert decisions[-1].action == "promote" and decisions[-1].variant == vid("int8")
    assert "nothing measured or learned" in decisions[0].reason
    assert decisions[1].reason.startswith(
        "fp32 on rpi4b-cpu/ai-edge-litert: p95 12 ms > target 8 ms"
    )
    assert "selective predicted 7.2 ms" in decisions[1].reason
    assert "int8 predicted 4.44 ms" in decisions[2].reason  # from selective's measured ratio
    int8_p95 = decisions[2].evidence["predictions"][vid("int8")]["metrics"]["p95_ms"]
    assert int8_p95["basis"] == "default"  # int8's own ratio: nothing measured it yet
    assert "meets every target" in decisions[-1].reason
    assert "loses 0.60 points" in decisions[-1].reason
    with Registry(path) as reg:  # every decision recorded with its evidence
        rows = reg.decisions("digits", PI4)
        assert [r.action for r in rows] == ["deploy", "deploy", "deploy", "promote"]
        assert rows[1].evidence["current"]["violations"] == ["p95 12 ms > target 8 ms"]


def test_class_with_loose_targets_keeps_the_more_accurate_variant(tmp_path):
    path = tmp_path / "r.db"
    make_registry(path).close()
    tgt = targets({"rpi4b-cpu": {"p95_ms": 8}, "rpi5-cpu": {"p95_ms": 50}})
    run_loop(path, Device("pi4-01", PI4, SLOW_PI), tgt)
    decisions, deployed = run_loop(path, Device("pi5-01", PI5, {"fp32": 9.0}), tgt)
    assert deployed == ["fp32"]
    assert decisions[-1].action == "promote" and decisions[-1].variant == vid("fp32")
    # the first guess used the similar Pi 4's float measurement as an absolute prior
    assert decisions[0].evidence["basis"] == "priors"
    assert "rpi4b-cpu/ai-edge-litert (same board family raspberrypi" in decisions[0].reason


def test_variant_failing_the_accuracy_budget_is_never_chosen(tmp_path):
    acc = {"fp32": (0.970, 80_000), "fp16": (0.9695, 40_000), "int8-bad": (0.940, 21_000)}
    path = tmp_path / "r.db"
    make_registry(path, acc).close()
    truth = {"fp32": 12.0, "fp16": 12.2, "int8": 4.0}
    tgt = targets({"rpi4b-cpu": {"p95_ms": 8}})
    for n, forced in enumerate(((), (vid("int8-bad"),))):  # not even when forced
        decisions, deployed = run_loop(tmp_path / "r.db", Device(f"pi4-0{n}", PI4, truth), tgt,
                                       forced=forced)  # fmt: skip
        assert "int8-bad" not in deployed
        last = decisions[-1]
        assert last.action == "infeasible"
        gate = [e for e in last.evidence["excluded"] if e["variant"] == vid("int8-bad")]
        assert gate[0]["gate"] == "accuracy" and "loses 3.00 points" in gate[0]["reason"]


def test_rolled_back_variant_is_not_chosen_again_unless_forced(tmp_path):
    acc = {k: ACCURACY[k] for k in ("fp32", "fp16", "int8")}
    path = tmp_path / "r.db"
    with make_registry(path, acc) as reg:
        reg.upsert_device("pi4-09", hardware_class=PI4)
        dep = reg.record_deployment("pi4-09", vid("int8"), reg.next_release("digits"), "m" * 64)
        reg.finish_deployment(dep, "rolled_back", "probe crashed: SIGSEGV")
    tgt = targets({"rpi4b-cpu": {"p95_ms": 8}})
    decisions, deployed = run_loop(path, Device("pi4-01", PI4, SLOW_PI), tgt)
    assert "int8" not in deployed and decisions[-1].action == "infeasible"
    excl = {e["variant"]: e for e in decisions[-1].evidence["excluded"]}
    assert "SIGSEGV" in excl[vid("int8")]["reason"]
    decisions, deployed = run_loop(path, Device("pi4-02", PI4, SLOW_PI), tgt, forced=(vid("int8"),))
    assert deployed[-1] == "int8" and decisions[-1].action == "promote"


def test_infeasible_targets_report_the_pareto_front(tmp_path):
    path = tmp_path / "r.db"
    make_registry(path).close()
    decisions, deployed = run_loop(path, Device("pi4-01", PI4, SLOW_PI),
                                   targets({"rpi4b-cpu": {"p95_ms": 1}}))  # fmt: skip
    assert deployed == ["fp32", "int8"]  # int8 came closest; nothing left improves on it
    assert decisions[1].evidence["basis"] == "closest"
    last = decisions[-1]
    assert last.action == "infeasible" and "Pareto front" in last.reason
    front = {p["recipe"] for p in last.evidence["pareto"]}  # (accuracy, p95): the targeted
    assert front == {"fp32", "selective", "int8"}  # fp16, dynamic-int8, int16x8: dominated by fp32
    assert last.evidence["pareto_metrics"] == ["accuracy_drop", "p95_ms"]
    full = {p["recipe"] for p in last.evidence["pareto_all"]}  # + memory, energy (priors)
    assert front <= full


def test_measured_ratios_of_one_class_choose_a_similar_class_first_guess(tmp_path):
    tgt = targets({"rpi5-cpu": {"p95_ms": 1.5}})

    def first_guess(with_pi4: bool) -> Decision:
        reg = make_registry(tmp_path / f"r{with_pi4}.db")
        if with_pi4:  # class A measured: int8 is 5x faster than fp32 there
            a = add_device(reg, Device("pi4-01", PI4, {"fp32": 10.0, "int8": 2.0}))
            a.feed(reg, vid("fp32"))
            a.feed(reg, vid("int8"))
        add_device(reg, Device("pi5-01", PI5, {"fp32": 6.0})).feed(reg, vid("fp32"))
        d = decide(build_context(reg, "digits", PI5, tgt))
        reg.close()
        return d

    learned = first_guess(True)
    assert learned.action == "deploy" and learned.variant == vid("int8")
    pred = learned.evidence["predictions"][vid("int8")]["metrics"]["p95_ms"]
    assert pred["basis"] == "similar" and pred["value"] == pytest.approx(1.2)
    assert "int8 is 5.0x faster than fp32 on rpi4b-cpu/ai-edge-litert" in learned.reason
    assert learned.reason.startswith("first guess from priors of class rpi5-cpu/ai-edge-litert")
    # without class A, the ANCHORS prior (2.7x) predicts 2.2 ms: int8 is only the closest
    default = first_guess(False)
    assert default.evidence["basis"] == "closest" and "comes closest" in default.reason
    pred = default.evidence["predictions"][vid("int8")]["metrics"]["p95_ms"]
    assert pred["basis"] == "default" and pred["value"] == pytest.approx(6.0 * 0.37)


def test_priors_predict_a_class_next_model_and_transfer_only_between_similar_classes():
    obs = [Observation("m1", PI4, "a", "fp32", 10.0), Observation("m1", PI4, "b", "int8", 3.0),
           Observation("m2", PI4, "c", "fp32", 20.0),
           Observation("m2", "x86_64-cpu/ai-edge-litert", "d", "fp32", 2.0)]  # fmt: skip
    pri = Priors(obs)
    nxt = pri.predict(PI4, "m2", "int8", "p95_ms")
    assert nxt is not None and nxt.basis == "class" and nxt.value == pytest.approx(6.0)
    # another runtime on the same board: absolute float number transfers (score 3)
    other_rt = pri.predict("rpi4b-cpu/tflite-runtime", "m2", "int8", "p95_ms")
    assert other_rt is not None and other_rt.basis == "similar"
    # a Pi 5 only shares the accelerator with the x86 host, and the family with the Pi 4
    assert pri.predict(PI5, "m2", "int8", "p95_ms").value == pytest.approx(6.0)  # type: ignore[union-attr]
    assert pri.predict("rock5b-cpu/ai-edge-litert", "m1", "int8", "p95_ms") is None
    assert pri.ratio("rock5b-cpu/ai-edge-litert", "int8", "p95_ms").basis == "similar"
    default = Priors([]).ratio(PI4, "dynamic-int8", "p95_ms")
    assert default.basis == "default" and "ANCHORS.md" in default.source and default.value > 1.0
    a, b = HardwareClass.from_id(PI4), HardwareClass.from_id("rpi4b-edgetpu-usb/ai-edge-litert")
    assert similarity(a, b) == (1.5, "same board family raspberrypi")


@pytest.mark.parametrize(
    ("windows", "inferences", "temps", "enough", "why"),
    [
        (0, 0, (), False, "no telemetry"),
        (2, 400, (50.0, 50.0), False, "2/3 windows"),
        (5, 50, (50.0,) * 5, False, "50/100 inferences"),
        (5, 500, (45.0, 47.0, 49.5), False, "temperature still moving"),
        (5, 500, (49.0, 49.5, 50.5), True, "temperature stable"),
    ],
)
def test_enough_telemetry_rule(windows, inferences, temps, enough, why):
    st = Stats(PI4, "v", windows=windows, inferences=inferences, recent_temps_c=temps)
    ok, text = enough_telemetry(st, EnoughRule())
    assert ok is enough and why in text


def test_waits_until_the_canary_has_enough_telemetry(tmp_path):
    with make_registry(tmp_path / "r.db") as reg:
        dev = add_device(reg, Device("pi4-01", PI4, SLOW_PI))
        tgt = targets({"rpi4b-cpu": {"p95_ms": 8}})
        dev.feed(reg, vid("fp32"), windows=1)
        d = decide(build_context(reg, "digits", PI4, tgt, current=vid("fp32")))
        assert d.action == "wait" and "1/3 windows" in d.reason
        dev.feed(reg, vid("fp32"), windows=2, temp=60.0)  # heating up after the first window
        d = decide(build_context(reg, "digits", PI4, tgt, current=vid("fp32")))
        assert d.action == "wait" and "temperature still moving" in d.reason


def test_pareto_front_treats_unknown_as_worst():
    pts = [{"variant": "a", "accuracy_drop": 0.0, "p95_ms": 10.0},
           {"variant": "b", "accuracy_drop": 0.5, "p95_ms": 4.0},
           {"variant": "c", "accuracy_drop": 0.6, "p95_ms": 5.0},
           {"variant": "d", "accuracy_drop": 0.1, "p95_ms": None}]  # fmt: skip
    assert [p["variant"] for p in pareto_front(pts)] == ["a", "b"]
