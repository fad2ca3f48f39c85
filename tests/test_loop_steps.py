"""The search space as the pure optimizer sees it (issue 11, items 3-4): when the PTQ menu
cannot meet the targets, ``decide`` asks for the next generation step in the practitioner's
order (cheap PTQ, then selective k searched, then QAT) with its predicted gain and host cost,
and says ``infeasible`` only when that space is exhausted, with the Pareto front of what was
tried and why each failed. No I/O: contexts are built by hand."""

from __future__ import annotations

from collections.abc import Sequence

from deploy.fleet.registry_types import HardwareClass, Stats, Variant
from deploy.loop.candidates import build_candidates
from deploy.loop.learning import Observation, Priors
from deploy.loop.optimizer import ClassContext, decide
from deploy.loop.steps import Step, recipe_family
from deploy.loop.targets import parse_targets

PI4 = "rpi4b-cpu/ai-edge-litert"
HW = HardwareClass.from_id(PI4)
FLOAT_ACC = 0.9778
# recipe -> host accuracy (fusionnet-like: full int8 collapses)
PTQ = {"fp32": 0.9778, "fp16": 0.9778, "dynamic-int8": 0.9806, "int8": 0.10, "int16x8": 0.9778}
FP32_P95 = 0.018


def variants(accuracy: dict[str, float]) -> list[Variant]:
    return [
        Variant(f"{r}-id", "fusion", r, f"/v/{r}.tflite", f"{r:0<64}"[:64], 180_000, r,
                accuracy=a)
        for r, a in accuracy.items()
    ]  # fmt: skip


def steps(qat: bool = True) -> tuple[Step, ...]:
    return (
        Step("selective-search", "selective-k", "selective", 4.0, 300.0, 0.17,
             what="keep the k most sensitive operators in float"),
        Step("qat", "qat", "int8", 122.0, 185.0, 0.17, available=qat,
             why_not="" if qat else "needs labelled training data (--train)",
             what="quantization-aware training"),
    )  # fmt: skip


def stats(variant: str, p95: float) -> Stats:
    return Stats(PI4, variant, windows=4, inferences=400, p95_ms=p95, recent_temps_c=(50.0,) * 3)


def context(
    accuracy: dict[str, float],
    measured: dict[str, float],
    *,
    current: str | None = "fp32-id",
    p95_target: float = 0.013,
    step_list: Sequence[Step] = steps(),
    observations: Sequence[Observation] = (),
) -> ClassContext:
    t = parse_targets({"targets": {"max_accuracy_drop": 1.0, "p95_ms": p95_target}})
    ct = t.for_class(PI4)
    cands, excluded = build_candidates(variants(accuracy), FLOAT_ACC, ct, HW)
    obs = [Observation("fusion", PI4, f"{r}-id", r, p) for r, p in measured.items()]
    return ClassContext(
        "fusion", HW, ct, tuple(cands), tuple(excluded),
        {f"{r}-id": stats(f"{r}-id", p) for r, p in measured.items()},
        Priors([*obs, *observations], [HW]), current, steps=tuple(step_list),
    )  # fmt: skip


def test_ptq_menu_missing_the_target_asks_for_the_selective_search_with_gain_and_cost() -> None:
    d = decide(context(PTQ, {"fp32": FP32_P95}))
    assert d.action == "generate" and d.variant is None
    gen = d.evidence["generate"]
    assert gen["name"] == "selective-search"
    # predicted gain: fp32 measured x the selective prior (0.6), below the 0.013 ms target
    assert abs(gen["predicted"]["p95_ms"]["value"] - FP32_P95 * 0.6) < 1e-4
    assert gen["host_cost_s"] == 4.0 and gen["violations"] == [] and gen["skipped"] == []
    assert "next in the search space: selective-search" in d.reason
    assert "host cost ~4 s" in d.reason and "int8" not in d.evidence["learned"]
    space = {s["step"]: s["state"] for s in d.evidence["search_space"]}
    assert space == {"selective-search": "open", "qat": "open"}


def test_a_ptq_variant_predicted_to_fix_goes_first_no_generation() -> None:
    # the class learned (from another model) that dynamic-int8 is 2x faster than fp32 here
    learned = [Observation("digits", PI4, "d-fp32", "fp32", 0.04),
               Observation("digits", PI4, "d-dyn", "dynamic-int8", 0.02)]  # fmt: skip
    d = decide(context(PTQ, {"fp32": FP32_P95}, observations=learned))
    assert d.action == "deploy" and d.variant == "dynamic-int8-id", d.reason
    assert d.evidence["basis"] == "fix"


def test_after_the_selective_search_failed_the_budget_qat_is_next() -> None:
    acc = PTQ | {"selective-k1": 0.95, "selective-k2": 0.96}  # both lose > 1 point
    d = decide(context(acc, {"fp32": FP32_P95}))
    assert d.action == "generate" and d.evidence["generate"]["name"] == "qat"
    # QAT is full int8: predicted with int8's ratio (default 0.37 here)
    assert abs(d.evidence["generate"]["predicted"]["p95_ms"]["value"] - FP32_P95 * 0.37) < 1e-4
    assert "full int8" in d.evidence["generate"]["predicted"]["p95_ms"]["source"]
    space = {s["step"]: s["state"] for s in d.evidence["search_space"]}
    assert space["selective-search"] == "tried"


def test_a_generated_selective_candidate_is_predicted_with_the_selective_prior() -> None:
    acc = PTQ | {"selective-k1": 0.9722}
    d = decide(context(acc, {"fp32": FP32_P95}))
    assert recipe_family("selective-k1") == "selective"
    assert d.action == "deploy" and d.variant == "selective-k1-id", d.reason
    assert "selective-k1 predicted 0.0108 ms" in d.reason


def test_infeasible_only_when_the_space_is_exhausted_with_the_front_and_why_each_failed() -> None:
    acc = PTQ | {"selective-k1": 0.9722, "qat": 0.90}
    measured = {"fp32": FP32_P95, "selective-k1": 0.016}  # selective measured too slow
    d = decide(context(acc, measured, current="selective-k1-id"))
    assert d.action == "infeasible", d.reason
    assert "search space exhausted" in d.reason
    space = {s["step"]: s["state"] for s in d.evidence["search_space"]}
    assert space == {"selective-search": "tried", "qat": "tried"}
    tried = {t["recipe"]: t["violations"] for t in d.evidence["tried"]}
    assert "accuracy: loses 87.78 points" in tried["int8"][0]
    assert "accuracy: loses 7.78 points" in tried["qat"][0]
    assert tried["selective-k1"] == ["p95 0.016 ms > target 0.013 ms"]
    assert {p["recipe"] for p in d.evidence["pareto"]} >= {"selective-k1"}


def test_an_unavailable_step_is_skipped_and_named() -> None:
    acc = PTQ | {"selective-k1": 0.95}
    d = decide(context(acc, {"fp32": FP32_P95}, step_list=steps(qat=False)))
    assert d.action == "infeasible", d.reason
    space = {s["step"]: (s["state"], s["why"]) for s in d.evidence["search_space"]}
    assert space["qat"] == ("unavailable", "needs labelled training data (--train)")


def test_no_generation_when_full_int8_is_within_the_budget() -> None:
    acc = PTQ | {"int8": 0.975}
    d = decide(context(acc, {"fp32": FP32_P95, "int8": 0.016}, current="int8-id"))
    assert d.action == "infeasible", d.reason
    space = {s["step"]: s["state"] for s in d.evidence["search_space"]}
    assert space == {"selective-search": "not needed", "qat": "not needed"}


def test_without_steps_the_menu_is_the_whole_space() -> None:
    d = decide(context(PTQ, {"fp32": FP32_P95}, step_list=()))
    assert d.action == "infeasible" and d.evidence["search_space"] == []


def test_a_step_predicted_to_miss_is_passed_over_and_named() -> None:
    """A target the selective prior misses but full int8's meets: QAT goes first, and the
    decision says the selective search was passed over and what it was predicted to miss."""
    target = FP32_P95 * 0.55  # selective predicts 0.6 x float, int8 less
    d = decide(context(PTQ, {"fp32": FP32_P95}, p95_target=target))
    assert d.action == "generate", d.reason
    gen = d.evidence["generate"]
    assert gen["name"] == "qat" and gen["violations"] == []
    assert [s["step"] for s in gen["skipped"]] == ["selective-search"]
    assert "p95" in gen["skipped"][0]["violations"][0]
    assert "selective-search passed over (predicted to miss p95" in d.reason
