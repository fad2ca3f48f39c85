"""Issue 5, "Shown by": the closed loop on real Mosquitto with real agents.

One fleet for the module (tests/loop_fixtures.py): three hardware classes from the captured
trees in deploy/data/hwtrees, every agent a real subprocess serving ``digitswide`` (a wide MLP of
the digits, trained here by tests/models/make_digitswide.py) under its own load generator, the
host's registry, collector and deployer on the same broker. Not the demo's ``digitsnet``: its
int8 speed-up is compute-bound and on an AVX2-only core (the AMD EPYC CI runs on) full int8 is
no faster than float, so no latency target could separate them; ``digitswide`` is bound by
weight bandwidth (17 MB of float32 weights read per inference, 4.3 MB in int8), which int8 cuts
on every CPU.

* ``rpi4b-cpu`` (pi4-a canary, pi4-b; one thread): a p95 target of 0.5 x the float model's
  p95 as the class's own devices measure it just before the loop (the median of >= 6 window
  p95s, as the loop's roll-up computes it); the loop must move to a quantized variant.
* ``rpi5-cpu`` (pi5-a): a loose p95 target (20x); the loop must keep the float model.
* ``x86_64-edgetpu-pci`` (box-a, box-b, box-c): a size target only a deliberately broken variant
  (int8 calibrated on noise, ~10 % accuracy) meets; the accuracy gate must keep it off every
  device. box-b fails every trial (``[health] max_rss_mb = 1``): the rollout test's fault.

Latency is only compared through the loop's own medians (the decisions' evidence), against
targets derived from measurements made at test time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Deployment, Variant
from deploy.fleet.rollout import Deployer, RolloutRunner
from deploy.fleet.rollout_plan import RolloutPolicy
from deploy.loop.driver import ClassRun, ClosedLoop, LoopSettings
from deploy.loop.optimizer import Decision, EnoughRule, enough_telemetry
from deploy.loop.targets import Targets, parse_targets
from deploy.push import PushResult
from tests.agent_proc import REPO, Observer, wait_for
from tests.loop_fixtures import (
    DIGITS_DATA,
    GATES,
    MODEL,
    DeviceSpec,
    Fleet,
    held_out_accuracy,
    running_fleet,
)

pytestmark = [pytest.mark.broker, pytest.mark.runtime, pytest.mark.host, pytest.mark.slow]

RECIPES = ("fp32", "fp16", "dynamic-int8", "int8", "edgetpu")
TIGHT, LOOSE, GATED = "rpi4b-cpu", "rpi5-cpu", "x86_64-edgetpu-pci"
SPECS = (
    DeviceSpec("pi4-a", "rpi4b", threads=1),
    DeviceSpec("pi4-b", "rpi4b", threads=1),
    DeviceSpec("pi5-a", "rpi5", threads=2),
    DeviceSpec("box-a", "x86-m2-coral", threads=1),
    # every trial on box-b fails its memory gate; it never gets the float model either
    DeviceSpec("box-b", "x86-m2-coral", health={"max_rss_mb": 1}, deploy_float=False),
    DeviceSpec("box-c", "x86-m2-coral", threads=1),
)
# Five windows, not three: the median of five window p95s shrugs off the one or two windows a
# neighbour's probe or trial (a core at 100 % for ~1 s, all agents share 2 cores) slows down.
RULE = EnoughRule(min_windows=5, min_inferences=100)
TARGET_RULE = EnoughRule(min_windows=6, min_inferences=120)  # what a derived target rests on
# The tight p95 target, as a fraction of the float p95 the class measured just before: float
# misses it 2x; dynamic-range and full int8 (0.05-0.17x float on one thread of the EPYC, quiet;
# see tests/models/make_digitswide.py) meet it 3-10x; fp16 (expanded to float at load) misses.
TIGHT_FACTOR = 0.5
MAX_DROP = 1.0  # points


def settings(timeout_s: float = 150.0, since: float | None = None) -> LoopSettings:
    # one class at a time: every "board" here is a process on the same two cores, and another
    # class's probe and trial would inflate the latency this class is judged on. ``since``: the
    # loop also judges the float windows a derived target came from (as the demo does), so
    # the float model cannot pass a target set at 0.5x its own measured p95
    return LoopSettings(
        poll_s=0.25, rule=RULE, timeout_s=timeout_s, parallel_classes=False, since=since
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    from tests.models.make_digitswide import make

    source, _ = make(tmp_path_factory.mktemp("digitswide"))
    with running_fleet(tmp_path_factory.mktemp("loop-fleet"), SPECS, RECIPES, source) as f:
        yield f


@pytest.fixture(scope="module")
def bad_variant(fleet: Fleet) -> Variant:
    """A genuinely bad variant that would be the smallest of all: the tiny test CNN's full int8
    conversion calibrated on noise (so its input scale is ~600x too coarse), scored by the
    converter on the held-out digits like every other variant. Registered as an ``int8``
    variant of ``digits``."""
    from deploy.convert import convert

    noise = fleet.workdir / "noise.npz"
    rng = np.random.default_rng(5)  # fixed: the conversion cache hits on the next run
    np.savez(noise, x=rng.uniform(-300, 300, (64, 8, 8, 1)).astype(np.float32))
    out = fleet.workdir / "variants" / "digits_int8_noisecalib.tflite"
    r = convert(REPO / "tests" / "models" / "digits.keras", "int8", out,
                calibration=noise, validation=DIGITS_DATA)  # fmt: skip
    assert r.ok and r.evaluation is not None and r.sha256 and r.size, r.error
    v = Variant(
        id=f"int8-noisecalib-{r.sha256[:12]}", model=MODEL, recipe="int8", path=str(out),
        sha256=r.sha256, size=r.size, quantization=r.quantization or "int8",
        accuracy=r.evaluation.accuracy, agreement=r.evaluation.agreement,
        snr_db=r.evaluation.snr_db, operators=list(r.operators),
        min_runtime=list(r.min_runtime), conversion_s=r.conversion_s,
    )  # fmt: skip
    fleet.host.reg.add_variant(v)
    return v


@dataclass
class LoopResult:
    runs: dict[str, ClassRun]
    targets: Targets
    target_p95: float  # the tight class's target
    size_target: float  # the gated class's size target (MB)
    first_deployment: int  # deployments with a larger id were made by the loop


def all_deployments(reg: Registry) -> list[Deployment]:
    rows = [d for c in reg.hardware_classes() for d in reg.deployments_for(c.id, MODEL)]
    return sorted(rows, key=lambda d: d.id)


def last_deployment_id(reg: Registry) -> int:
    return max((d.id for d in all_deployments(reg)), default=0)


def last_decision_id(reg: Registry) -> int:
    return max((d.id for d in reg.decisions(MODEL)), default=0)


def deployments_since(reg: Registry, first: int, device: str | None = None) -> list[Deployment]:
    return [d for d in all_deployments(reg)
            if d.id > first and (device is None or d.device == device)]  # fmt: skip


def p95_of(decision: Any) -> float:
    """The canary's measured p95 (the loop's own median of window p95s) a decision judged."""
    cur = decision.evidence["current"]
    est = cur["metrics"]["p95_ms"]
    assert est["basis"] == "measured", cur
    return float(est["value"])


def float_p95_on(fleet: Fleet, device: str, since: float | None) -> float:
    """The float model's p95 on ``device``'s class, as the loop measures it (the median of the
    window p95s in the class roll-up), over at least TARGET_RULE's windows."""
    reg, fp32 = fleet.host.reg, fleet.variant("fp32")
    cls = fleet.class_of(device)
    wait_for(lambda: enough_telemetry(reg.class_stats(cls, fp32.id, since), TARGET_RULE)[0], 60,
             f"float telemetry on {cls}")  # fmt: skip
    p95 = reg.class_stats(cls, fp32.id, since).p95_ms
    assert p95 is not None
    return p95


@pytest.fixture(scope="module")
def loop(fleet: Fleet, bad_variant: Variant) -> LoopResult:
    """One run of the closed loop over the whole fleet."""
    # the tight target: from the float p95 the class's devices measure now (after the
    # conversions above, which load the machine like nothing in the loop does)
    measured_from = time.time()
    float_p95 = float_p95_on(fleet, "pi4-a", measured_from)
    target = TIGHT_FACTOR * float_p95
    real = [v.size_mb for v in fleet.variants if v.available]
    size_target = math.sqrt(min(real) * bad_variant.size_mb)  # only the bad one fits
    targets = parse_targets({
        "model": MODEL, "targets": {"max_accuracy_drop": MAX_DROP},
        "class": {TIGHT: {"p95_ms": target}, LOOSE: {"p95_ms": 20 * float_p95},
                  GATED: {"size_mb": size_target}},
    }, "test")  # fmt: skip
    reg = fleet.host.reg
    first = last_deployment_id(reg)
    runs = ClosedLoop(reg, fleet.host.dep, targets, settings(since=measured_from)).run()
    by_class = {r.class_id.split("/")[0]: r for r in runs}
    return LoopResult(by_class, targets, target, size_target, first)


# ---- 2. convergence ------------------------------------------------------------------------------


def test_tight_class_converges_to_a_quantized_variant(fleet: Fleet, loop: LoopResult) -> None:
    reg = fleet.host.reg
    run = loop.runs[TIGHT]
    assert run.state == "done", (run.summary(), [d.reason for d in run.decisions])
    chosen = reg.variant(run.final_variant or "")
    assert chosen is not None and chosen.recipe != "fp32"
    assert chosen.quantization != "float32", chosen
    # within 3 device trials: the loop's count and the registry's deployments to the canary
    assert run.trials <= 3
    canary_pushes = deployments_since(reg, loop.first_deployment, run.canary)
    assert 1 <= len(canary_pushes) <= 3, canary_pushes
    # the float model missed the target on the canary and the chosen variant met it, by the
    # loop's own measurements (median of window p95s, >= 5 windows since the target was set)
    judged_fp32 = [d for d in run.decisions if d.action == "deploy" and "current" in d.evidence]
    assert judged_fp32 and judged_fp32[0].evidence["current"]["recipe"] == "fp32"
    assert p95_of(judged_fp32[0]) > loop.target_p95
    promote = run.decisions[-1]
    assert promote.action == "promote" and promote.variant == chosen.id
    assert p95_of(promote) <= loop.target_p95
    # promoted to the rest of the class: pi4-b serves it (its retained state says so)
    assert run.rollout is not None and run.rollout.state == "done", run.rollout
    for device in run.devices:
        assert fleet.retained_model(device).get("sha256") == chosen.sha256, device


def test_loose_class_keeps_the_float_model(fleet: Fleet, loop: LoopResult) -> None:
    reg = fleet.host.reg
    run = loop.runs[LOOSE]
    assert run.state == "done", run.summary()
    fp32 = fleet.variant("fp32")
    assert run.final_variant == fp32.id
    assert run.trials == 0
    assert deployments_since(reg, loop.first_deployment, run.canary) == []
    assert run.decisions[-1].action == "promote"
    loose = loop.targets.for_class(run.class_id).p95_ms
    assert loose is not None and p95_of(run.decisions[-1]) <= loose
    assert fleet.retained_model(run.canary).get("sha256") == fp32.sha256


def test_chosen_variants_lose_at_most_one_point_on_held_out_digits(
    fleet: Fleet, loop: LoopResult
) -> None:
    """Scored here with the agent's runtime, not taken from the registry."""
    reg = fleet.host.reg
    float_acc = held_out_accuracy(Path(fleet.variant("fp32").path))
    assert float_acc > 0.9
    for key in (TIGHT, LOOSE):
        chosen = reg.variant(loop.runs[key].final_variant or "")
        assert chosen is not None, key
        acc = held_out_accuracy(Path(chosen.path))
        assert (float_acc - acc) * 100 <= MAX_DROP, (chosen.recipe, acc, float_acc)


# ---- 3. the accuracy gate ----------------------------------------------------------------------


def test_a_variant_failing_the_accuracy_gate_is_never_deployed(
    fleet: Fleet, loop: LoopResult, bad_variant: Variant
) -> None:
    reg = fleet.host.reg
    # premise: it really is bad, and it is the only variant meeting the gated class's size
    # target, so only the gate keeps the loop from choosing it there
    assert held_out_accuracy(Path(bad_variant.path)) < 0.5
    fits = [v for v in reg.variants_for(MODEL) if v.available and v.size_mb <= loop.size_target]
    assert [v.id for v in fits] == [bad_variant.id]
    gated = loop.runs[GATED]
    assert gated.state == "infeasible", gated.summary()
    # never deployed: no deployment row, no deploy command, never served or measured
    assert [d for d in all_deployments(reg) if d.variant == bad_variant.id] == []
    assert all(m["sha256"] != bad_variant.sha256 for _, m in fleet.deploy_commands())
    states = fleet.messages("/state")
    assert states, "the observer saw no state message"
    served = {(b.get("model") or {}).get("sha256") for _, b in states}
    served |= {(b.get("model") or {}).get("sha256") for _, b in fleet.messages("/telemetry")}
    assert bad_variant.sha256 not in served
    assert all(reg.windows(c.id, bad_variant.sha256) == [] for c in reg.hardware_classes())
    # every decision of every class lists it as excluded by the accuracy gate, with the reason
    rows = reg.decisions(MODEL)
    assert len({r.class_id for r in rows}) >= 3
    for row in rows:
        excl = {e["variant"]: e for e in row.evidence["excluded"]}
        assert bad_variant.id in excl, (row.class_id, row.action)
        assert excl[bad_variant.id]["gate"] == "accuracy"
        assert "budget" in excl[bad_variant.id]["reason"]
    # the infeasible verdict's Pareto front does not offer it either
    final = reg.decisions(MODEL, gated.class_id)[-1]
    assert final.action == "infeasible"
    assert bad_variant.id not in {p["variant"] for p in final.evidence["pareto_all"]}


# ---- 4. rollout with injected failures ---------------------------------------------------------


def test_rollout_with_a_failing_device_aborts_and_rolls_back(fleet: Fleet) -> None:
    reg, dep = fleet.host.reg, fleet.host.dep
    devices = ["box-a", "box-b", "box-c"]  # canary box-a, then wave 1 box-b, then box-c
    cls = fleet.class_of("box-a")
    assert all(fleet.class_of(d) == cls for d in devices)
    new = fleet.variant("int8")
    before = {d: fleet.retained_model(d) for d in devices}
    previous = {d: reg.variant_by_sha(m["sha256"]) if m else None for d, m in before.items()}
    prev_a = previous["box-a"]
    assert prev_a is not None and prev_a.sha256 != new.sha256  # premise: box-a moves
    sent_before = len(fleet.deploy_commands())
    first = last_deployment_id(reg)

    runner = RolloutRunner(dep, new, previous, class_id=cls,
                           policy=RolloutPolicy(canary=1, waves=(1, "100%")))  # fmt: skip
    out = runner.run(devices)

    assert out.state == "aborted", out.to_dict()
    assert out.committed == ["box-a"]
    assert list(out.failed) == ["box-b"]
    assert "RSS" in out.failed["box-b"]  # the injected fault, as the device reported it
    assert list(out.rolled_back) == ["box-a"]
    row = reg.rollout(out.rollout_id)
    assert row is not None and row.state == "aborted"
    states = {r.device: r.state for r in reg.rollout_devices(out.rollout_id)}
    assert states == {"box-a": "rolled_back", "box-b": "rolled_back"}  # box-c never notified
    # on the wire: after box-b's failure nothing new was notified; box-a got a new manifest
    sent = fleet.deploy_commands()[sent_before:]
    assert [d for d, _ in sent] == ["box-a", "box-b", "box-a"]
    (_, m_new), (_, m_b), (_, m_back) = sent
    assert m_new["sha256"] == m_b["sha256"] == new.sha256
    assert m_back["sha256"] == prev_a.sha256  # the old bytes ...
    assert m_back["release"] > m_new["release"]  # ... as a NEW release
    # the devices: box-a serves its previous variant at the new release; box-c untouched
    now_a = fleet.retained_model("box-a")
    assert (now_a["sha256"], now_a["release"]) == (prev_a.sha256, m_back["release"])
    assert fleet.retained_model("box-c") == before["box-c"]
    assert fleet.retained_model("box-b").get("sha256") != new.sha256
    # the registry's deployments tell the same story
    rows = [(d.device, d.variant, d.outcome, d.release) for d in deployments_since(reg, first)]
    assert rows == [
        ("box-a", new.id, "committed", m_new["release"]),
        ("box-b", new.id, "rolled_back", m_b["release"]),
        ("box-a", prev_a.id, "committed", m_back["release"]),
    ]


# ---- 5. a host restart mid-loop ----------------------------------------------------------------


class FloatStart(NamedTuple):
    cls: str
    fp32: Variant
    pushed: float
    targets: Targets


def class_from_float(fleet: Fleet, canary: str) -> FloatStart:
    """The canary's whole class starts from the float model (a new release), like a fresh
    optimization: no other device of the class keeps serving a variant from an earlier test,
    which the class-wide roll-up would judge from windows taken while the canary was being
    switched. Returns the class, the float variant, when it was pushed, and targets whose p95
    the float model misses on the canary."""
    host = fleet.host
    cls = fleet.class_of(canary)
    fp32 = fleet.variant("fp32")
    pushed = time.time()
    for device in [s.device_id for s in fleet.specs if fleet.class_of(s.device_id) == cls]:
        assert host.dep.push(device, fp32).ok
    target = TIGHT_FACTOR * float_p95_on(fleet, canary, pushed)
    spec = {
        "model": MODEL,
        "targets": {"max_accuracy_drop": MAX_DROP},
        "class": {TIGHT: {"p95_ms": target}},
    }
    return FloatStart(cls, fp32, pushed, parse_targets(spec, "test"))


class HostCrashError(Exception):
    """Raised from on_decision: the host process dies mid-loop."""


def test_the_registry_survives_a_host_restart_mid_loop(fleet: Fleet) -> None:
    host = fleet.host
    canary = "pi4-a"
    cls, fp32, pushed, targets = class_from_float(fleet, canary)
    first_dep, first_dec = last_deployment_id(host.reg), last_decision_id(host.reg)

    # run 1: dies at the first decision after its first deploy: the push has completed and the
    # canary serves the new variant (the loop is waiting for its telemetry, or, when another
    # device of the class already measured it, about to promote it)
    seen: list[Decision] = []

    def crash_after_deploy(cid: str, d: Decision) -> None:
        seen.append(d)
        if len(seen) >= 2 and seen[-2].action == "deploy":
            raise HostCrashError

    loop1 = ClosedLoop(
        host.reg, host.dep, targets, settings(since=pushed), on_decision=crash_after_deploy
    )
    with pytest.raises(HostCrashError):
        loop1.run(only=[cls])
    loop1.pool.shutdown(wait=True)
    deployed = seen[-2].variant
    assert deployed is not None and deployed != fp32.id
    assert seen[-1].variant == deployed and seen[-1].action in ("wait", "promote")
    run1_ids = [r.id for r in host.reg.decisions(MODEL, cls) if r.id > first_dec]
    assert len(run1_ids) == len(seen)

    # the host restarts: registry and collector closed, reopened from the file
    host.restart()
    reg = host.reg
    assert [r.id for r in reg.decisions(MODEL, cls) if r.id > first_dec] == run1_ids
    variant = reg.variant(deployed)
    assert variant is not None

    # run 2 continues from the canary's retained state: the variant run 1 deployed
    restarted = time.time()
    loop2 = ClosedLoop(reg, host.dep, targets, settings())
    run = loop2.run(only=[cls])[0]
    assert run.state == "done", (run.summary(), [d.reason for d in run.decisions])
    assert run.decisions[0].variant == deployed and run.decisions[0].action in ("wait", "promote")
    assert run.final_variant == deployed
    assert run.trials == 0  # nothing re-deployed to the canary
    # both runs' decisions are in the registry, in order
    rows = [r for r in reg.decisions(MODEL, cls) if r.id > first_dec]
    assert [r.id for r in rows[: len(run1_ids)]] == run1_ids
    assert len(rows) == len(run1_ids) + len(run.decisions)
    assert all(r.ts >= restarted for r in rows[len(run1_ids) :])
    assert rows[-1].action == "promote" and rows[-1].variant == deployed
    # device trials for the class over both runs
    canary_pushes = deployments_since(reg, first_dep, canary)
    assert 1 <= len(canary_pushes) <= 3
    assert fleet.retained_model(canary)["sha256"] == variant.sha256


# ---- releases pushed outside the registry --------------------------------------------------


def test_the_loop_deploys_above_a_release_pushed_outside_the_registry(fleet: Fleet) -> None:
    """`edge-deploy push` signs with release = now in milliseconds; the loop's deployer must
    still be able to reach that device (its release counter only accepts higher releases)."""
    from deploy.push import push_model

    host, device = fleet.host, "pi5-a"
    fp32, int8 = fleet.variant("fp32"), fleet.variant("int8")
    manual = push_model(Path(int8.path), device, host.address, host.key, name=MODEL,
                        version="manual", recipe="int8", gates=GATES, timeout_s=60,
                        progress=None)  # fmt: skip
    assert manual.ok, manual.message
    assert manual.release > 10**12  # milliseconds: far above the registry's counter
    wait_for(lambda: fleet.retained_model(device).get("release") == manual.release, 10,
             "the manual push in the retained state")  # fmt: skip

    def stored_release() -> Any:
        d = host.reg.device(device)
        return d is not None and (d.state.get("model") or {}).get("release") == manual.release

    wait_for(stored_release, 10, "the collector to store it")
    back = host.dep.push(device, fp32)
    assert back.ok, back.message
    assert back.release > manual.release
    assert fleet.retained_model(device)["sha256"] == fp32.sha256


class HostDiedError(BaseException):
    """The host process dies: not an Exception, so nothing in the loop catches it."""


@dataclass
class DyingDeployer(Deployer):
    """The seam for a host that dies mid-deploy: records the deployment and starts the real
    push (signed manifest, chunks, as Deployer.push does), then dies once the device has
    started the new variant's trial. The transfer is complete; the device goes on alone."""

    observer: Observer | None = None

    def push(self, device: str, variant: Variant, *, reason: str = "") -> PushResult:
        from deploy.push import push_model

        assert self.observer is not None
        release = self.registry.next_release(self.model, at_least=self._release_floor(device))
        self.registry.record_deployment(device, variant.id, release, variant.sha256)
        threading.Thread(
            target=push_model, args=(Path(variant.path), device, self.broker, self.private_key),
            kwargs={"name": self.model, "version": str(release), "release": release,
                    "recipe": variant.recipe, "gates": self.gates, "timeout_s": 60,
                    "progress": None},
            daemon=True,
        ).start()  # fmt: skip
        self.observer.wait_event("trial_started", 60, sha256=variant.sha256, release=release)
        raise HostDiedError


def test_a_restarted_host_follows_the_canary_that_committed_after_it_died(fleet: Fleet) -> None:
    """The host dies while the canary runs a new variant's trial (its retained state still
    names the old one); the restarted loop must notice the commit and judge the new variant,
    not wait forever for telemetry of the old one, and must not push it again."""
    host = fleet.host
    canary = "pi4-a"
    cls, fp32, pushed, targets = class_from_float(fleet, canary)
    dying = DyingDeployer(
        host.reg, host.address, host.key, MODEL, gates={**GATES, "min_seconds": 8.0},
        observer=fleet.observer,
    )  # fmt: skip
    seen: list[Decision] = []
    loop1 = ClosedLoop(
        host.reg, dying, targets, settings(since=pushed), on_decision=lambda c, d: seen.append(d)
    )
    try:
        runs = loop1.run(only=[cls])
        raise AssertionError(f"run 1 did not deploy: {runs[0].summary()} {seen}")
    except HostDiedError:
        pass
    deployed = seen[-1].variant
    assert seen[-1].action == "deploy" and deployed is not None and deployed != fp32.id
    first_dep = last_deployment_id(host.reg)

    host.restart()
    reg = host.reg
    canary_row = reg.device(canary)
    assert canary_row is not None
    state = canary_row.state
    # premise: the restarted host sees the canary still in the trial, serving the old variant
    assert state["install"]["state"] == "trial" and state["model"]["sha256"] == fp32.sha256
    loop2 = ClosedLoop(reg, host.dep, targets, settings(timeout_s=60))
    run = loop2.run(only=[cls])[0]
    assert run.state == "done", (run.summary(), [d.reason for d in run.decisions])
    assert run.final_variant == deployed
    assert run.trials == 0
    assert deployments_since(reg, first_dep, canary) == []  # not pushed again
    # it judged the variant that committed after the restart, not the one the state named
    assert run.decisions[-1].action == "promote" and run.decisions[-1].variant == deployed
    final = reg.variant(deployed)
    assert final is not None and fleet.retained_model(canary)["sha256"] == final.sha256
