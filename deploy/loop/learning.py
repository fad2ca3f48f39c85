"""What the loop learns per hardware class: how each recipe compares with float there.

From the device telemetry roll-ups (one :class:`Observation` per model, class and variant with
enough telemetry) it derives, per class and recipe, the ratio of the recipe's p95 latency,
memory and energy to the float (``fp32``) variant of the same model: the geometric mean over
every model measured with both on that class. Those ratios predict

* the same class's next model (its float measurement, or any measured variant, times the ratio),
* similar classes that have not measured the recipe yet,
* and, when nothing has been measured anywhere, documented defaults from ../shared/ANCHORS.md.

Similarity (documented in docs/loop.md): same board and accelerator (score 3) > same board family
and accelerator (2) > same accelerator, or same board family (1); the same runtime adds 0.5 as a
tie-breaker. Ratios transfer from any similar class (score >= 1); absolute values (a float p95
measured on another class) transfer only within the same board family and accelerator
(score >= 2), because absolute speed differs by board far more than ratios do.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from deploy.fleet.registry_types import HardwareClass, Stats
from deploy.loop.steps import recipe_family
from deploy.loop.targets import UNITS

if TYPE_CHECKING:
    from deploy.fleet.registry import Registry

BASE = "fp32"
DEVICE_METRICS = ("p95_ms", "peak_memory_mb", "mj_per_inference")
ABSOLUTE_MIN_SCORE = 2.0

_INT8 = "full int8 ~2.7x faster than fp32 with XNNPACK (ANCHORS.md: Pi 4 MobileNet v2 46->17 ms, v1 77->24 ms; x86 LiteRT v1 11.5->4.2 ms)"  # noqa: E501
_DYN = "dynamic-range int8 ~0.9x the speed of fp32, can be slower (ANCHORS.md: Pixel 2 MobileNet v2 89->98 ms; x86 LiteRT v1 11.5->12.1 ms)"  # noqa: E501
_FP16 = "fp16 weights ~1.0x fp32 on CPU, dequantized at load (ANCHORS.md: x86 LiteRT v1 11.5->11.3 ms, v2 7.4->7.6 ms)"  # noqa: E501
_I16 = "int16x8 has no anchor; its kernels are mostly non-XNNPACK, assumed 1.5x slower than fp32"
_SEL = "selective (part int8, sensitive layers float) has no anchor; assumed between fp32 and int8"
_TPU = "Edge TPU ~18x faster than fp32 on the board CPU (ANCHORS.md: Coral USB MobileNet v2 2.6 ms vs Pi 4 XNNPACK fp32 46 ms)"  # noqa: E501
_MEM = "memory: the runtime, numpy and MQTT client (~44 MB, ANCHORS.md footprint) dominate; int8 weights are 4x smaller: assumed"  # noqa: E501
# Defaults per accelerator kind: recipe -> (latency ratio vs fp32, memory ratio, why).
# Energy defaults to the latency ratio (energy ~ power x time at similar power).
DEFAULTS: dict[str, dict[str, tuple[float, float, str]]] = {
    "cpu": {
        "fp32": (1.0, 1.0, "float is the reference"),
        "fp16": (1.0, 1.0, _FP16),
        "dynamic-int8": (1.11, 0.9, _DYN),
        "int8": (0.37, 0.85, _INT8),
        "int16x8": (1.5, 0.9, _I16),
        "selective": (0.6, 0.9, _SEL),
    },
}
DEFAULTS["edgetpu"] = DEFAULTS["cpu"] | {"edgetpu": (0.057, 0.85, _TPU)}
UNKNOWN_RECIPE = (1.0, 1.0, "no default for this recipe; assumed like fp32")
# A recipe that runs another's kernels borrows its ratios until it is measured itself: a QAT
# model is full int8 (the same int8 kernels, the same I/O).
KIN = {"qat": "int8"}


@dataclass(frozen=True)
class Observation:
    """A measured (model, class, variant) with enough telemetry to judge."""

    model: str
    class_id: str
    variant: str
    recipe: str
    p95_ms: float | None = None
    peak_memory_mb: float | None = None
    mj_per_inference: float | None = None

    def get(self, metric: str) -> float | None:
        value = getattr(self, metric)
        assert value is None or isinstance(value, float)
        return value


@dataclass(frozen=True)
class Estimate:
    """A predicted or measured value with where it came from.

    ``basis``: "measured" (this variant on this class), "exact" (size), "class" (learned on this
    class), "similar" (learned on a similar class), "default" (ANCHORS.md prior)."""

    value: float
    basis: str
    source: str
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"value": round(self.value, 4)}


def describe_ratio(recipe: str, metric: str, ratio: float) -> str:
    if metric == "p95_ms":
        if ratio <= 1.0:
            return f"{recipe} is {1 / ratio:.1f}x faster than {BASE}"
        return f"{recipe} is {ratio:.1f}x slower than {BASE}"
    what = "memory" if metric == "peak_memory_mb" else "energy per inference"
    return f"{recipe} uses {ratio:.2f}x the {what} of {BASE}"


def similarity(a: HardwareClass, b: HardwareClass) -> tuple[float, str]:
    """Score (0 = not similar) and the reason, per the rules in the module docstring."""
    same_accel = a.accelerator == b.accelerator
    if a.board == b.board and same_accel:
        score, why = 3.0, f"same board {a.board} and accelerator {a.accelerator}"
    elif a.board_family == b.board_family and same_accel:
        score, why = 2.0, f"same board family {a.board_family} and accelerator {a.accelerator}"
    elif same_accel:
        score, why = 1.0, f"same accelerator {a.accelerator}"
    elif a.board_family == b.board_family:
        score, why = 1.0, f"same board family {a.board_family}"
    else:
        return 0.0, "not similar"
    if a.runtime == b.runtime:
        score += 0.5
    return score, why


class Priors:
    """Ratios and predictions learned from observations (pure; build one per decision)."""

    def __init__(
        self, observations: Iterable[Observation], classes: Iterable[HardwareClass] = ()
    ) -> None:
        self.observations = list(observations)
        self._classes = {c.id: c for c in classes}
        self._obs: dict[tuple[str, str, str], list[Observation]] = defaultdict(list)
        for o in self.observations:
            self._obs[(o.class_id, o.model, o.recipe)].append(o)

    def hw(self, cid: str) -> HardwareClass:
        return self._classes.get(cid) or HardwareClass.from_id(cid)

    def class_ids(self) -> list[str]:
        return sorted({o.class_id for o in self.observations} | set(self._classes))

    def measured(self, cid: str, model: str, recipe: str, metric: str) -> float | None:
        values = [v for o in self._obs.get((cid, model, recipe), []) if (v := o.get(metric))]
        return min(values) if values else None  # several variants of one recipe: the best

    def learned_ratio(self, cid: str, recipe: str, metric: str) -> tuple[float, int] | None:
        """Geometric mean over models of recipe/fp32 on ``cid``, and how many models."""
        logs = []
        for model in sorted({o.model for o in self.observations if o.class_id == cid}):
            base = self.measured(cid, model, BASE, metric)
            value = self.measured(cid, model, recipe, metric)
            if base and value:
                logs.append(math.log(value / base))
        if not logs:
            return None
        return math.exp(sum(logs) / len(logs)), len(logs)

    def similar_classes(self, cid: str) -> list[tuple[str, float, str]]:
        """Other known classes similar to ``cid``: (id, score, why), most similar first."""
        me = self.hw(cid)
        out = [(o, *similarity(me, self.hw(o))) for o in self.class_ids() if o != cid]
        return sorted((t for t in out if t[1] > 0), key=lambda t: (-t[1], t[0]))

    def ratio(self, cid: str, recipe: str, metric: str) -> Estimate:
        """The ratio recipe/fp32 of ``metric`` on ``cid``: learned there, else on the most
        similar class that measured it, else the default for the accelerator."""
        if recipe == BASE:
            return Estimate(1.0, "exact", f"{BASE} is the reference")
        own = self.learned_ratio(cid, recipe, metric)
        if own:
            return Estimate(
                own[0],
                "class",
                f"{describe_ratio(recipe, metric, own[0])} measured on {cid} ({own[1]} model(s))",
                own[1],
            )
        for other, _score, why in self.similar_classes(cid):
            got = self.learned_ratio(other, recipe, metric)
            if got:
                text = describe_ratio(recipe, metric, got[0])
                return Estimate(got[0], "similar", f"{text} on {other} ({why})", got[1])
        kin = KIN.get(recipe)
        if kin is not None:
            est = self.ratio(cid, kin, metric)
            return Estimate(
                est.value, est.basis, f"{recipe} runs {kin} kernels: {est.source}", est.n
            )
        table = DEFAULTS.get(self.hw(cid).accelerator, DEFAULTS["cpu"])
        lat, mem, why = table.get(recipe) or table.get(recipe_family(recipe), UNKNOWN_RECIPE)
        value = mem if metric == "peak_memory_mb" else lat
        return Estimate(
            value, "default", f"default prior: {why if metric != 'peak_memory_mb' else _MEM}"
        )

    def predict(
        self, cid: str, model: str, recipe: str, metric: str, *, anchor: str | None = None
    ) -> Estimate | None:
        """``metric`` of ``model``'s ``recipe`` variant on ``cid``: measured if it was, else a
        measured variant of the same model on ``cid`` (``anchor`` recipe first, then fp32, then
        any) scaled by the ratios, else a measurement on a close class (score >= 2) scaled."""
        own = self.measured(cid, model, recipe, metric)
        if own is not None:
            return Estimate(own, "measured", f"{recipe} measured on {cid}")
        sources = [(cid, "")]
        sources += [
            (o, f" ({why})") for o, s, why in self.similar_classes(cid) if s >= ABSOLUTE_MIN_SCORE
        ]
        mine = self.ratio(cid, recipe, metric)
        for src, why in sources:
            recipes = sorted({r for (c, m, r) in self._obs if c == src and m == model})
            order = [r for r in (anchor, BASE) if r in recipes] + recipes
            for ref in order:
                base = self.measured(src, model, ref, metric)
                if base is None:
                    continue
                ref_ratio = self.ratio(cid, ref, metric)
                value = base * mine.value / ref_ratio.value
                text = f"{ref} measured {base:.3g} {UNITS[metric]} on {src}{why} x {mine.value:.2f}"
                if ref != BASE:
                    text += f" / {ref_ratio.value:.2f} ({ref} vs {BASE})"
                basis = mine.basis if src == cid else "similar"
                return Estimate(value, basis, f"{text}; {mine.source}", mine.n)
        return None

    def learned(self) -> dict[str, dict[str, dict[str, float]]]:
        """Every learned ratio: class -> recipe -> metric -> ratio (for the report)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        recipes = sorted({o.recipe for o in self.observations} - {BASE})
        for cid in self.class_ids():
            for recipe in recipes:
                for metric in DEVICE_METRICS:
                    got = self.learned_ratio(cid, recipe, metric)
                    if got:
                        out.setdefault(cid, {}).setdefault(recipe, {})[metric] = round(got[0], 4)
        return out


def observations_from_registry(
    reg: Registry,
    *,
    judge: Callable[[Stats], bool] = lambda s: s.windows > 0,
    since: float | None = None,
) -> list[Observation]:
    """One Observation per (model, class, variant) whose roll-up ``judge`` accepts."""
    out = []
    classes = [c.id for c in reg.hardware_classes()]
    for model in reg.model_names():
        for v in reg.variants_for(model):
            for cid in classes:
                st = reg.class_stats(cid, v.id, since)
                if st.windows and judge(st):
                    out.append(
                        Observation(
                            model,
                            cid,
                            v.id,
                            v.recipe,
                            st.p95_ms,
                            st.peak_memory_mb,
                            st.mj_per_inference,
                        )
                    )
    return out
