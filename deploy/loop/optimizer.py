"""The closed loop's decisions, as pure functions: given the candidates of a model on one
hardware class, the class's measured telemetry and the learned priors, what happens next.

``decide(ctx)`` returns a :class:`Decision`:

* ``deploy`` a variant to the class's canary (the first guess, or the next choice after a
  measurement missed a target);
* ``wait`` for enough telemetry of the variant on the canary (:func:`enough_telemetry`);
* ``promote`` the canary's variant to the class: it met every target;
* ``generate`` a new candidate with the next open step of the search space (deploy.loop.steps:
  selective k searched, then QAT), when the candidates there are cannot meet the targets;
* ``infeasible``: no candidate left that is expected to fix the violated targets; the evidence
  lists the Pareto front over (accuracy drop, p95, memory, energy).

The decision's ``reason`` is a sentence saying how it was chosen; ``evidence`` holds every number
used (targets, measurements, each candidate's predictions with their sources, exclusions), so
the report can show the decision log and a later reader can check it. See docs/loop.md.

No I/O here: the driver (deploy.loop.driver.build_context) reads the registry into a
:class:`ClassContext` and records the decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.wire.record import Record
from deploy.fleet.registry_types import HardwareClass, Stats
from deploy.loop.candidates import Candidate, Exclusion
from deploy.loop.enough import EnoughRule, enough_telemetry
from deploy.loop.learning import DEVICE_METRICS, Estimate, Priors
from deploy.loop.pareto import pareto_front as _front
from deploy.loop.steps import Step, open_steps, step_status
from deploy.loop.targets import LABELS, UNITS, ClassTargets, Violation

__all__ = [
    "ACTIONS",
    "ClassContext",
    "Decision",
    "EnoughRule",
    "decide",
    "enough_telemetry",
    "pareto_front",
]
ACTIONS = ("deploy", "wait", "promote", "generate", "infeasible")
IMPROVEMENT = 0.95  # a fallback choice must be predicted >= 5 % better on every violated metric
PARETO_METRICS = ("accuracy_drop", *DEVICE_METRICS)


@dataclass(frozen=True)
class Decision(Record):
    action: str  # one of ACTIONS
    variant: str | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassContext:
    """Everything one decision for (model, class) depends on."""

    model: str
    hw: HardwareClass
    targets: ClassTargets
    candidates: tuple[Candidate, ...]
    excluded: tuple[Exclusion, ...] = ()
    measured: Mapping[str, Stats] = field(default_factory=dict)  # variant id -> stats here
    priors: Priors = field(default_factory=lambda: Priors(()))
    current: str | None = None  # the variant on the canary now
    rule: EnoughRule = field(default_factory=EnoughRule)
    steps: tuple[Step, ...] = ()  # generation steps the driver can run (deploy.loop.steps)

    def recipes(self) -> list[str]:
        return [c.recipe for c in self.candidates] + [e.recipe for e in self.excluded]

    def open_steps(self) -> list[Step]:
        return open_steps(self.steps, self.recipes(), [(e.recipe, e.gate) for e in self.excluded])


@dataclass(frozen=True)
class _Option:
    cand: Candidate
    values: dict[str, Estimate | None]
    violations: list[Violation]

    def value(self, metric: str) -> float | None:
        est = self.values.get(metric)
        return None if est is None else est.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.cand.recipe,
            "accuracy_drop": self.cand.accuracy_drop,
            "metrics": {m: None if e is None else e.to_dict() for m, e in self.values.items()},
            "violations": [v.describe() for v in self.violations],
        }


def _fmt(metric: str, value: float) -> str:
    return f"{value:.3g} {UNITS[metric]}"


def _option(
    ctx: ClassContext, cand: Candidate, judged: Mapping[str, Stats], anchor: str | None
) -> _Option:
    values: dict[str, Estimate | None] = {"size_mb": Estimate(cand.size_mb, "exact", "file size")}
    st = judged.get(cand.variant)
    for metric in DEVICE_METRICS:
        got = None if st is None else st.metrics().get(metric)
        if got is not None:
            values[metric] = Estimate(
                got, "measured", f"measured on {ctx.hw.id}", st.windows if st else 0
            )
        else:
            values[metric] = ctx.priors.predict(
                ctx.hw.id, ctx.model, cand.recipe, metric, anchor=anchor
            )
    plain = {m: (None if e is None else e.value) for m, e in values.items()}
    return _Option(cand, values, ctx.targets.check(plain))


def _cost(c: Candidate) -> str:
    if c.accuracy_drop is None:
        return "accuracy cost unknown"
    return f"loses {c.accuracy_drop:.2f} points ({c.accuracy_basis})"


def _judged(ctx: ClassContext) -> dict[str, Stats]:
    return {v: s for v, s in ctx.measured.items() if enough_telemetry(s, ctx.rule)[0]}


def decide(ctx: ClassContext) -> Decision:
    """The next step for ``ctx.model`` on ``ctx.hw`` (pure; record it with :func:`record`).

    A decision whose current variant was measured only on hot (throttled) windows says so."""
    d = _decide(ctx)
    st = ctx.measured.get(ctx.current) if ctx.current else None
    if st is not None and st.judged_on_hot and d.action != "wait":
        note = (
            f"; judged on {st.hot_windows} throttled/hot window(s): no cool window yet, "
            "the board may be to blame, not the model"
        )
        return Decision(d.action, d.variant, d.reason + note, d.evidence | {"judged_on_hot": True})
    return d


def _decide(ctx: ClassContext) -> Decision:
    judged = _judged(ctx)
    ev: dict[str, Any] = {
        "model": ctx.model,
        "class": ctx.hw.id,
        "targets": ctx.targets.to_dict(),
        "rule": ctx.rule.to_dict(),
        "excluded": [e.to_dict() for e in ctx.excluded],
        "candidates": [c.to_dict() for c in ctx.candidates],
        "measured": {v: s.to_dict() for v, s in ctx.measured.items()},
        "search_space": step_status(
            ctx.steps, ctx.recipes(), [(e.recipe, e.gate) for e in ctx.excluded]
        ),
    }
    if not ctx.candidates:
        why = "; ".join(f"{e.recipe}: {e.reason}" for e in ctx.excluded) or "no variants"
        text = f"no candidate for {ctx.hw.id} passed the host gates ({why})"
        return _generate(ctx, None, text, ev) or _infeasible(ctx, [], text, ev)
    cands = {c.variant: c for c in ctx.candidates}
    cur = ctx.current
    if cur is not None and cur not in cands:
        gone = next((e.reason for e in ctx.excluded if e.variant == cur), "unknown variant")
        ev["current_dropped"] = {"variant": cur, "reason": gone}
        cur = None
    if cur is None:
        return _first_guess(ctx, judged, ev)
    st = ctx.measured.get(cur)
    ok, why = enough_telemetry(st, ctx.rule)
    cand = cands[cur]
    if not ok or st is None:
        return Decision(
            "wait", cur, f"waiting for telemetry of {cand.recipe} on {ctx.hw.id}: {why}", ev
        )
    current = _option(ctx, cand, judged, None)
    ev["current"] = {"variant": cur, **current.to_dict()}
    if not current.violations:
        return _promote(ctx, current, ev)
    return _next_choice(ctx, judged, current, ev)


def _promote(ctx: ClassContext, cur: _Option, ev: dict[str, Any]) -> Decision:
    met = []
    for metric in ctx.targets.set_metrics():
        value, target = cur.value(metric), ctx.targets.get(metric)
        if value is not None and target is not None:
            met.append(f"{LABELS[metric]} {_fmt(metric, value)} <= {_fmt(metric, target)}")
    unknown = [
        LABELS[m]
        for m in ctx.targets.set_metrics()
        if m != "max_accuracy_drop" and cur.value(m) is None
    ]
    text = f"{cur.cand.recipe} meets every target on {ctx.hw.id} ({', '.join(met) or 'no targets'})"
    if unknown:
        text += f"; not measurable here: {', '.join(unknown)}"
    return Decision("promote", cur.cand.variant, text + f"; {_cost(cur.cand)}", ev)


def _first_guess(ctx: ClassContext, judged: Mapping[str, Stats], ev: dict[str, Any]) -> Decision:
    options = [_option(ctx, c, judged, None) for c in ctx.candidates]
    ev["predictions"] = {o.cand.variant: o.to_dict() for o in options}
    tried = {o.cand.variant for o in options if o.cand.variant in judged and o.violations}
    fresh = [o for o in options if o.cand.variant not in tried]
    if not fresh:
        why = "every candidate was measured and missed a target"
        return _generate(ctx, None, why, ev) or _infeasible(ctx, options, why, ev)
    skipped = []
    for o in fresh:
        if not o.violations:
            break
        skipped.append(o)
    else:
        seen = [o for o in options if o.cand.variant in judged]
        if seen:  # something was measured here: move on from the best of it, as after a trial
            best = min(seen, key=lambda o: max(v.measured / v.target for v in o.violations))
            return _next_choice(ctx, judged, best, ev)
        o = fresh[0]
        text = (
            f"no candidate is predicted to meet every target on {ctx.hw.id}; deploying the "
            f"most accurate, {o.cand.recipe}, to measure it"
        )
        return Decision("deploy", o.cand.variant, text, ev | {"basis": "fallback"})
    known = [m for m in DEVICE_METRICS if o.values.get(m) is not None and ctx.targets.get(m)]
    if not known and not skipped:
        text = (
            f"first guess for {ctx.hw.id}: nothing measured or learned predicts this model "
            f"there yet, so the most accurate candidate, {o.cand.recipe}, goes first "
            f"({_cost(o.cand)})"
        )
        return Decision("deploy", o.cand.variant, text, ev | {"basis": "most-accurate"})
    parts = []
    for metric in known or [m for m in DEVICE_METRICS if o.values.get(m) is not None][:1]:
        est = o.values[metric]
        assert est is not None
        parts.append(f"{LABELS[metric]} predicted {_fmt(metric, est.value)} ({est.source})")
    text = f"first guess from priors of class {ctx.hw.id}: {o.cand.recipe} " + "; ".join(parts)
    if skipped:
        text += "; more accurate " + ", ".join(
            f"{s.cand.recipe} predicted {s.violations[0].describe()}" for s in skipped
        )
    return Decision("deploy", o.cand.variant, f"{text}; {_cost(o.cand)}", ev | {"basis": "priors"})


def _next_choice(
    ctx: ClassContext, judged: Mapping[str, Stats], cur: _Option, ev: dict[str, Any]
) -> Decision:
    anchor = cur.cand.recipe
    options = [_option(ctx, c, judged, anchor) for c in ctx.candidates]
    ev["predictions"] = {o.cand.variant: o.to_dict() for o in options}
    tried = {o.cand.variant for o in options if o.cand.variant in judged and o.violations}
    fresh = [o for o in options if o.cand.variant not in tried]
    missed = "; ".join(v.describe() for v in cur.violations)
    fixers = [o for o in fresh if not o.violations]
    if fixers:
        o = fixers[0]  # candidates are sorted by accuracy cost
        parts = []
        for v in cur.violations:
            est = o.values.get(v.metric)
            if est is not None:
                parts.append(
                    f"{o.cand.recipe} predicted {_fmt(v.metric, est.value)} ({est.source})"
                )
        text = f"{cur.cand.recipe} on {ctx.hw.id}: {missed}; " + "; ".join(parts or [o.cand.recipe])
        return Decision("deploy", o.cand.variant, f"{text}, {_cost(o.cand)}", ev | {"basis": "fix"})
    no_fix = f"{cur.cand.recipe} on {ctx.hw.id}: {missed}; no candidate is predicted to fix it"
    if (step := _generate(ctx, anchor, no_fix, ev, must_fix=True)) is not None:
        return step
    improvers = []
    for o in fresh:
        ratios = []
        for v in cur.violations:
            value = o.value(v.metric)
            if value is None or value > IMPROVEMENT * v.measured:
                break
            ratios.append(value / v.target)
        else:
            improvers.append((max(ratios), o.cand.cost, o))
    if improvers:
        _, _, o = min(improvers, key=lambda t: (t[0], t[1]))
        text = (
            f"{cur.cand.recipe} on {ctx.hw.id}: {missed}; no candidate is predicted to meet "
            f"every target, {o.cand.recipe} comes closest (predicted "
            + ", ".join(
                f"{LABELS[v.metric]} {_fmt(v.metric, o.value(v.metric) or 0.0)}"
                for v in cur.violations
            )
            + f"), {_cost(o.cand)}"
        )
        return Decision("deploy", o.cand.variant, text, ev | {"basis": "closest"})
    why = f"{cur.cand.recipe} on {ctx.hw.id}: {missed}; no candidate left is expected to fix it"
    return _generate(ctx, anchor, why, ev) or _infeasible(ctx, options, why, ev)


def _generate(
    ctx: ClassContext, anchor: str | None, why: str, ev: dict[str, Any], *, must_fix: bool = False
) -> Decision | None:
    """``generate`` with the first open step (predicted to meet every target when
    ``must_fix``), or None when the search space has no such step left. Steps passed over
    because they are predicted to miss are named in the evidence (``skipped``)."""
    skipped: list[dict[str, Any]] = []
    for step in ctx.open_steps():
        values = {
            m: ctx.priors.predict(ctx.hw.id, ctx.model, step.predict_as, m, anchor=anchor)
            for m in DEVICE_METRICS
        }
        if step.size_mb is not None:
            values["size_mb"] = Estimate(step.size_mb, "similar", "the int8 variant's size")
        violations = ctx.targets.check({m: e.value if e else None for m, e in values.items()})
        if must_fix and violations:
            skipped.append({"step": step.name, "violations": [v.describe() for v in violations]})
            continue
        parts = [
            f"{LABELS[m]} predicted {_fmt(m, e.value)} ({e.source})"
            for m in DEVICE_METRICS
            if (e := values.get(m)) is not None and ctx.targets.get(m) is not None
        ]
        gain = "; ".join(parts) or "no device target to predict"
        if violations:
            gain += "; still predicted to miss " + ", ".join(v.describe() for v in violations)
        passed = "".join(
            f"; {d['step']} passed over (predicted to miss {', '.join(d['violations'])})"
            for d in skipped
        )
        text = (
            f"{why}{passed}; next in the search space: {step.name} ({step.what}), {gain}; "
            f"host cost ~{step.host_cost_s:.0f} s (bound {step.host_bound_s:.0f} s)"
        )
        generate = {
            **step.to_dict(),
            "predicted": {m: e.to_dict() if e else None for m, e in values.items()},
            "violations": [v.describe() for v in violations],
            "skipped": skipped,
        }
        learned = ctx.priors.learned().get(ctx.hw.id, {})
        extra = {"basis": "generate", "generate": generate, "learned": learned}
        return Decision("generate", None, text, ev | extra)
    return None


def pareto_front(
    points: Iterable[Mapping[str, Any]], metrics: Sequence[str] = PARETO_METRICS
) -> list[dict[str, Any]]:
    """Points that no other point dominates (deploy.loop.pareto), by default over
    accuracy drop and every device metric."""
    return _front(points, metrics)


def _infeasible(
    ctx: ClassContext, options: list[_Option], why: str, ev: dict[str, Any]
) -> Decision:
    points = [
        {
            "variant": o.cand.variant,
            "recipe": o.cand.recipe,
            "accuracy_drop": o.cand.accuracy_drop,
            **{m: o.value(m) for m in DEVICE_METRICS},
            "basis": {m: (e.basis if (e := o.values.get(m)) else None) for m in DEVICE_METRICS},
            "violations": [v.describe() for v in o.violations],
        }
        for o in options
    ]
    # The front shown is over accuracy and the device metrics this class has targets for: a
    # metric nobody constrained would fill it with variants differing only there (often by a
    # default prior). The full four-metric front is kept in the evidence too.
    dims = ["accuracy_drop"] + [m for m in DEVICE_METRICS if ctx.targets.get(m) is not None]
    front = pareto_front(points, dims)
    listing = ", ".join(
        f"{p['recipe']} ("
        + ", ".join(
            f"{LABELS.get(m, 'accuracy drop')} "
            + (
                "?"
                if p[m] is None
                else f"{p[m]:.3g}" + (" points" if m == "accuracy_drop" else f" {UNITS[m]}")
            )
            for m in dims
        )
        + ")"
        for p in front
    )
    tried: list[dict[str, Any]] = points + [
        {
            "variant": e.variant,
            "recipe": e.recipe,
            "accuracy_drop": e.accuracy_drop,
            "violations": [f"{e.gate}: {e.reason}"],
        }
        for e in ctx.excluded
    ]
    extra = {
        "pareto": front,
        "pareto_metrics": dims,
        "pareto_all": pareto_front(points),
        "tried": tried,
    }
    failed = "; ".join(f"{t['recipe']}: {t['violations'][0]}" for t in tried if t["violations"])
    text = f"{why}; search space exhausted; Pareto front: {listing or 'empty'}"
    return Decision(
        "infeasible", None, text + (f"; why each failed: {failed}" if failed else ""), ev | extra
    )
