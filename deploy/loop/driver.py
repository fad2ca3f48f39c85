"""The closed loop, wired to a real fleet: convert, measure on a canary per hardware class,
move to the variant expected to fix what was missed, promote in waves.

Pure decisions live in deploy.loop.optimizer (what to do next, and why); this module does it:
variants come from deploy.convert (host accuracy measured there, so a variant failing the
accuracy budget never reaches a device), pushes go through deploy.fleet.rollout.Deployer, telemetry
arrives through deploy.fleet.collector.Collector into the registry, and every decision is recorded
with its evidence. All state lives in the registry: a host restarted mid-loop picks up where
it stopped (the canary's current variant is read from its retained state).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import HardwareClass, ModelRow, Variant
from deploy.fleet.rollout import Deployer, RolloutOutcome, RolloutRunner
from deploy.fleet.rollout_plan import RolloutPolicy
from deploy.loop.candidates import build_candidates, float_accuracy
from deploy.loop.generate import Generated, Generator, variant_from_result
from deploy.loop.learning import Priors, observations_from_registry
from deploy.loop.optimizer import ClassContext, Decision, EnoughRule, decide, enough_telemetry
from deploy.loop.targets import Targets
from deploy.push import PushResult

log = logging.getLogger(__name__)

DEFAULT_RULE = EnoughRule()
DEFAULT_RECIPES = ("fp32", "fp16", "dynamic-int8", "int8", "int16x8", "selective", "edgetpu")


# ---- the registry reads and writes around a decision -------------------------------------------
def build_context(
    reg: Registry,
    model: str,
    class_id: str,
    targets: Targets,
    *,
    current: str | None = None,
    forced: Iterable[str] = (),
    rule: EnoughRule = DEFAULT_RULE,
    since: float | None = None,
    runtime_version: str | None = None,
    generator: Generator | None = None,
) -> ClassContext:
    """Read what :func:`decide` needs from the registry (and the generation steps
    ``generator`` can run, with their predicted cost)."""
    hw = reg.hardware_class(class_id) or HardwareClass.from_id(class_id)
    ct = targets.for_class(class_id)
    variants = reg.variants_for(model)
    row = reg.model(model)
    facc = float_accuracy(variants, row.float_metrics if row else {})
    cands, excluded = build_candidates(
        variants,
        facc,
        ct,
        hw,
        rolled_back=reg.rolled_back_variants(class_id, model),
        forced=forced,
        runtime_version=runtime_version,
    )
    measured = {c.variant: reg.class_stats(class_id, c.variant, since) for c in cands}
    obs = observations_from_registry(reg, judge=lambda s: enough_telemetry(s, rule)[0])
    priors = Priors(obs, reg.hardware_classes())
    steps = generator.steps(variants) if generator is not None else ()
    return ClassContext(
        model, hw, ct, tuple(cands), tuple(excluded), measured, priors, current, rule, steps
    )


def record(
    reg: Registry, decision: Decision, model: str, class_id: str, *, ts: float | None = None
) -> int:
    """Store ``decision`` with its evidence; returns the decision id."""
    return reg.record_decision(
        model,
        class_id,
        action=decision.action,
        variant=decision.variant,
        reason=decision.reason,
        evidence=decision.evidence,
        ts=time.time() if ts is None else ts,
    )


def prepare_variants(
    registry: Registry,
    model: str,
    source: Path,
    out_dir: Path,
    *,
    recipes: Sequence[str] = DEFAULT_RECIPES,
    calibration: Path | None = None,
    validation: Path | None = None,
    backend: str = "auto",
    progress: Any = None,
) -> list[Variant]:
    """Convert ``source`` with every recipe (cached by content), evaluate each on the host and
    store them in the registry. Failed and unavailable recipes are stored as unavailable."""
    from deploy.convert import Converter

    conv = Converter(
        source,
        calibration=calibration,
        validation=validation,
        backend=backend,
        progress=progress,
    )
    results = conv.convert_all(list(recipes), out_dir)
    float_acc = None
    for r in results:
        if r.recipe == "fp32" and r.ok and r.evaluation is not None:
            float_acc = r.evaluation.accuracy
    src_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    registry.add_model(ModelRow(model, str(source), src_sha, {"accuracy": float_acc}))
    variants = []
    for r in results:
        v = variant_from_result(model, r)
        registry.add_variant(v)
        variants.append(v)
    return variants


@dataclass
class ClassRun:
    """The loop's working state for one hardware class (rebuilt from the registry at start)."""

    class_id: str
    canary: str
    devices: list[str]
    # deciding | deploying | measuring | generating | promoting | done | infeasible
    state: str = "deciding"
    current: str | None = None  # variant id serving on the canary
    release: int | None = None  # its release (newer ones in the canary's state are followed)
    trials: int = 0
    decisions: list[Decision] = field(default_factory=list)
    pending: Future[Any] | None = None
    pending_variant: str | None = None
    rollout: RolloutOutcome | None = None
    final_variant: str | None = None
    note: str = ""
    generated: list[Generated] = field(default_factory=list)  # steps run for this class

    def summary(self) -> dict[str, Any]:
        return {
            "class": self.class_id,
            "canary": self.canary,
            "devices": self.devices,
            "state": self.state,
            "variant": self.final_variant or self.current,
            "trials": self.trials,
            "generated": [g.to_dict() for g in self.generated],
            "note": self.note,
            "rollout": self.rollout.to_dict() if self.rollout else None,
        }


@dataclass
class LoopSettings:
    poll_s: float = 0.5
    max_trials: int = 6
    timeout_s: float = 900.0
    rule: EnoughRule = field(default_factory=EnoughRule)
    policy: RolloutPolicy = field(default_factory=lambda: RolloutPolicy(waves=("100%",)))
    since: float | None = None  # judge only telemetry after this time (default: loop start)
    # False: one class at a time. Right when the devices share CPUs (the demo, tests: every
    # "board" is a process on the same two cores), where one class's probe and trial would
    # inflate another class's measured latency; a real fleet runs classes in parallel.
    parallel_classes: bool = True


class ClosedLoop:
    def __init__(
        self,
        registry: Registry,
        deployer: Deployer,
        targets: Targets,
        settings: LoopSettings | None = None,
        *,
        on_decision: Callable[[str, Decision], None] | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.registry = registry
        self.deployer = deployer
        self.model = deployer.model
        self.targets = targets
        self.settings = settings or LoopSettings()
        self.on_decision = on_decision
        self.generator = generator  # None: the menu converted up front is the whole space
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="loop-push")

    # ---- fleet view from the registry ----------------------------------------------------------
    def classes(self) -> dict[str, list[str]]:
        """Online devices per hardware class (sorted: the first is the canary)."""
        out: dict[str, list[str]] = {}
        for d in self.registry.devices():
            if d.online and d.hardware_class:
                out.setdefault(d.hardware_class, []).append(d.id)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def _serving(self, device: str) -> str | None:
        d = self.registry.device(device)
        return d.status.sha256 if d else None

    def variant_on(self, device: str) -> Variant | None:
        sha = self._serving(device)
        return self.registry.variant_by_sha(sha) if sha else None

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, only: Sequence[str] | None = None) -> list[ClassRun]:
        since = self.settings.since if self.settings.since is not None else time.time()
        runs = []
        for cid, devices in self.classes().items():
            if only and cid not in only:
                continue
            run = ClassRun(cid, devices[0], devices)
            current = self.variant_on(run.canary)
            run.current = current.id if current and current.model == self.model else None
            runs.append(run)
        deadline = time.monotonic() + self.settings.timeout_s
        while any(r.state not in ("done", "infeasible") for r in runs):
            if time.monotonic() > deadline:
                for r in runs:
                    if r.state not in ("done", "infeasible"):
                        r.note = f"timed out in state {r.state}"
                        r.state = "infeasible"
                break
            active = [r for r in runs if r.state not in ("done", "infeasible")]
            for r in active if self.settings.parallel_classes else active[:1]:
                self._step(r, since)
            time.sleep(self.settings.poll_s)
        self.pool.shutdown(wait=True)
        return runs

    def _step(self, run: ClassRun, since: float) -> None:
        if run.state in ("deploying", "promoting", "generating"):
            if run.pending is None or not run.pending.done():
                return
            self._finished(run)
            return
        if run.state not in ("deciding", "measuring"):
            return
        if not self._follow_canary(run):
            return
        ctx = build_context(
            self.registry,
            self.model,
            run.class_id,
            self.targets,
            current=run.current,
            rule=self.settings.rule,
            since=since,
            generator=self.generator,
        )
        decision = decide(ctx)
        last = run.decisions[-1] if run.decisions else None
        if (
            decision.action == "wait"
            and last
            and (last.action, last.variant) == ("wait", decision.variant)
        ):
            return  # do not log the same wait every poll
        record(self.registry, decision, self.model, run.class_id)
        run.decisions.append(decision)
        if self.on_decision:
            self.on_decision(run.class_id, decision)
        log.info("%s: %s %s: %s", run.class_id, decision.action, decision.variant, decision.reason)
        if decision.action == "wait":
            run.state = "measuring"
        elif decision.action == "deploy" and decision.variant:
            if run.trials >= self.settings.max_trials:
                run.state, run.note = "infeasible", f"stopped after {run.trials} device trials"
                return
            variant = self.registry.variant(decision.variant)
            assert variant is not None
            run.trials += 1
            run.state, run.pending_variant = "deploying", variant.id
            run.pending = self.pool.submit(self.deployer.push, run.canary, variant)
        elif decision.action == "promote":
            run.final_variant = decision.variant
            self._promote(run)
        elif decision.action == "generate" and self.generator is not None:
            step = str(decision.evidence.get("generate", {}).get("name"))
            run.state = "generating"  # host time, not a device trial
            budget = ctx.targets.max_accuracy_drop
            run.pending = self.pool.submit(self.generator.run, step, budget)
        else:
            run.state, run.note = "infeasible", decision.reason

    def _finished(self, run: ClassRun) -> None:
        assert run.pending is not None
        try:
            result = run.pending.result()
        except Exception as exc:
            log.warning("%s: push to %s failed: %s", run.class_id, run.canary, exc)
            result = None
        run.pending = None
        if run.state == "generating":
            if isinstance(result, Generated):
                run.generated.append(result)
                log.info("%s: %s: %s", run.class_id, result.step, result.note)
            run.state = "deciding"  # the new variants are candidates (or exclusions) now
            return
        if run.state == "promoting":
            run.rollout = result if isinstance(result, RolloutOutcome) else None
            run.state = "done"
            if run.rollout and run.rollout.state == "aborted":
                run.note = f"rollout aborted: {run.rollout.reason}"
            return
        if isinstance(result, PushResult) and result.ok:
            run.current, run.release = run.pending_variant, result.release
        elif isinstance(result, PushResult) and result.code == "busy":
            run.trials -= 1  # the canary was installing something else: not a trial
        run.state = "deciding"  # a rolled-back variant is excluded by the optimizer

    def _follow_canary(self, run: ClassRun) -> bool:
        """Sync ``run`` with the canary's retained state: a newer release of this model there
        (a deploy that committed after a host restart, an operator's push) becomes the current
        variant. False while the canary is installing something: nothing to decide yet."""
        d = self.registry.device(run.canary)
        status = d.status if d else None
        busy = status.install_state if status else None
        if busy not in (None, "idle"):
            release = ((status.install if status else None) or {}).get("release")
            run.note = f"canary {run.canary} busy: {busy} r{release}"
            return False
        model = status.model if status else None
        rel = model.release if model else None
        if model is None or model.name != self.model or rel is None:
            return True
        if run.release is not None and rel <= run.release:
            return True  # what this loop pushed, or older (a state not yet caught up)
        run.release = rel
        v = self.registry.variant_by_sha(model.sha256)
        if v is not None and v.model == self.model and v.id != run.current:
            log.info(
                "%s: the canary %s serves %s (release %d): following it",
                run.class_id,
                run.canary,
                v.id,
                rel,
            )
            run.current = v.id
        return True

    def _promote(self, run: ClassRun) -> None:
        variant = self.registry.variant(run.final_variant or "")
        rest = [  # the canary and devices already serving it need nothing
            d
            for d in run.devices
            if d != run.canary and (variant is None or self._serving(d) != variant.sha256)
        ]
        if not rest or variant is None:
            run.state = "done"
            return
        previous = {d: self.variant_on(d) for d in rest}
        runner = RolloutRunner(
            self.deployer, variant, previous, class_id=run.class_id, policy=self.settings.policy
        )
        run.state = "promoting"
        run.pending = self.pool.submit(runner.run, rest)
