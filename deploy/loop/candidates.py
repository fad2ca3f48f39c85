"""Which variants the optimizer may choose from on a class, and why the others may not.

Gates, in order (the first that fails is the reason recorded):

1. unavailable: the conversion failed or a tool was missing (``Variant.available``);
2. accuracy budget: host accuracy drop vs float above ``max_accuracy_drop`` (or unknown while a
   budget is set): never deployable, not even when forced;
3. hardware: an Edge TPU-compiled variant on a class without an Edge TPU;
4. runtime: the variant's minimum-runtime table says the class's runtime cannot load it;
5. rolled back on this class before: skipped unless the variant is in ``forced``.

Accuracy drop is in percentage points: ``(float accuracy - variant accuracy) x 100`` when the
host data had labels; otherwise ``(1 - top-1 agreement with float) x 100``, an upper bound on
the accuracy drop (a prediction that agrees with float is right exactly when float is).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.wire.record import Record
from deploy.fleet.registry_types import HardwareClass, Variant
from deploy.loop.targets import ClassTargets

FLOAT_RECIPE = "fp32"


@dataclass(frozen=True)
class Candidate(Record):
    variant: str
    recipe: str
    quantization: str
    size_mb: float
    accuracy: float | None  # host accuracy [0, 1] when labels exist
    accuracy_drop: float | None  # points vs float (see module docstring)
    accuracy_basis: str  # "accuracy" | "agreement" | "reference" | "unknown"

    @property
    def cost(self) -> float:
        """Accuracy cost used for ranking (unknown ranks last)."""
        return self.accuracy_drop if self.accuracy_drop is not None else float("inf")


@dataclass(frozen=True)
class Exclusion(Record):
    variant: str
    recipe: str
    gate: str  # "unavailable" | "accuracy" | "hardware" | "runtime" | "rolled_back"
    reason: str
    accuracy_drop: float | None = None  # points vs float, when known


def float_accuracy(variants: Iterable[Variant], float_metrics: Mapping[str, Any]) -> float | None:
    """The float model's host accuracy: the model row's, else its fp32 variant's."""
    acc = float_metrics.get("accuracy")
    if isinstance(acc, int | float) and not isinstance(acc, bool):
        return float(acc)
    for v in variants:
        if v.recipe == FLOAT_RECIPE and v.accuracy is not None:
            return v.accuracy
    return None


def accuracy_drop(v: Variant, float_acc: float | None) -> tuple[float | None, str]:
    if v.accuracy is not None and float_acc is not None:
        return round((float_acc - v.accuracy) * 100.0, 4), "accuracy"
    if v.agreement is not None:
        return round((1.0 - v.agreement) * 100.0, 4), "agreement"
    if v.recipe == FLOAT_RECIPE:
        return 0.0, "reference"
    return None, "unknown"


def needs_edgetpu(v: Variant) -> bool:
    if v.recipe == "edgetpu" or v.quantization == "edgetpu":
        return True
    return any("edgetpu" in str(op.get("name", "")).lower() for op in v.operators)


def runtime_problem(v: Variant, hw: HardwareClass, runtime_version: str | None) -> str | None:
    """A reason when the variant's min-runtime table rules out the class's runtime."""
    for row in v.min_runtime:
        if row.get("runtime") != hw.runtime or row.get("ok", True):
            continue
        if runtime_version is None or str(row.get("version")) == runtime_version:
            return f"{hw.runtime} {row.get('version')} cannot load it"
    return None


def build_candidates(
    variants: Iterable[Variant],
    float_acc: float | None,
    targets: ClassTargets,
    hw: HardwareClass,
    *,
    rolled_back: Mapping[str, str] | None = None,
    forced: Iterable[str] = (),
    runtime_version: str | None = None,
) -> tuple[list[Candidate], list[Exclusion]]:
    """Split ``variants`` into candidates for ``hw`` and exclusions with their reasons.
    Candidates are sorted by accuracy cost (most accurate first), then size."""
    keep, out = [], []
    forced_set, rolled = set(forced), dict(rolled_back or {})
    budget = targets.max_accuracy_drop
    for v in variants:
        drop, basis = accuracy_drop(v, float_acc)
        gate = reason = None
        if not v.available:
            gate, reason = "unavailable", v.unavailable_reason or "conversion did not produce it"
        elif budget is not None and drop is None:
            gate, reason = "accuracy", "no host accuracy or agreement to check the budget against"
        elif budget is not None and drop is not None and drop > budget:
            gate = "accuracy"
            reason = f"loses {drop:.2f} points on host data ({basis}) > budget {budget:g}"
        elif needs_edgetpu(v) and hw.accelerator != "edgetpu":
            gate, reason = "hardware", f"compiled for the Edge TPU; {hw.id} has none"
        elif problem := runtime_problem(v, hw, runtime_version):
            gate, reason = "runtime", problem
        elif v.id in rolled and v.id not in forced_set:
            gate, reason = "rolled_back", f"rolled back on {hw.id} before: {rolled[v.id]}"
        if gate is not None and reason is not None:
            out.append(Exclusion(v.id, v.recipe, gate, reason, drop))
            continue
        cand = Candidate(v.id, v.recipe, v.quantization, v.size_mb, v.accuracy, drop, basis)
        keep.append(cand)
    keep.sort(key=lambda c: (c.cost, c.size_mb, c.variant))
    return keep, out
