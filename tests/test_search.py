"""The selective search (issue 11, item 3): after full int8 fails the accuracy budget on the
quantization-sensitive fusionnet, new selective candidates are generated, k = 1, 2, ...
operators kept in float, and the least float within the budget is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.records import telemetry

pytestmark = [pytest.mark.host]

DATA = Path(__file__).resolve().parent.parent / "deploy" / "data" / "fusionnet"


def test_int8_fails_the_budget_and_the_search_generates_a_selective_candidate_that_fits(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    from deploy.convert import Converter
    from deploy.loop.search import search_selective

    data = DATA / "fusion_data.npz"
    conv = Converter(DATA / "fusionnet.keras", calibration=data, validation=data, cache=False)
    fp32, int8 = conv.convert_all(["fp32", "int8"], tmp_path)
    assert fp32.evaluation and int8.evaluation
    float_acc = fp32.evaluation.accuracy
    assert float_acc is not None and int8.evaluation.accuracy is not None
    assert (float_acc - int8.evaluation.accuracy) * 100 > 1.0  # int8 fails a 1-point budget
    found = search_selective(conv, tmp_path, float_acc, 1.0, max_k=4)
    assert found.chosen is not None, found.to_dict()
    last = found.attempts[-1]
    assert last.why == "fits" and last.drop_points is not None and last.drop_points <= 1.0
    assert found.chosen.recipe == f"selective-k{last.k}"
    # every smaller k was tried and failed the budget, with its reason
    assert [a.k for a in found.attempts] == list(range(1, last.k + 1))
    assert all("budget" in a.why for a in found.attempts[:-1])
    kept = found.chosen.details["kept_float"]
    assert len(kept) == last.k
    assert Path(found.chosen.path or "").is_file()


def test_the_loop_generates_a_selective_candidate_on_demand_after_int8_fails_the_budget(
    tmp_path: Path,
) -> None:
    """Driver side with real conversions: the PTQ menu (fp32, int8) in the registry, fp32
    measured too slow on the class; the optimizer asks for the selective search, the
    generator makes selective-k1 into the registry, and the next decision deploys it."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    from deploy.fleet.registry import Registry
    from deploy.loop.driver import build_context, prepare_variants
    from deploy.loop.generate import Generator
    from deploy.loop.optimizer import decide
    from deploy.loop.targets import parse_targets

    data, cid = DATA / "fusion_data.npz", "rpi4b-cpu/ai-edge-litert"
    reg = Registry(tmp_path / "reg.sqlite")
    out = tmp_path / "variants"
    made = prepare_variants(reg, "fusion", DATA / "fusionnet.keras", out, recipes=["fp32", "int8"],
                            calibration=data, validation=data)  # fmt: skip
    fp32 = next(v for v in made if v.recipe == "fp32")
    reg.upsert_device("pi4-a", hardware_class=cid)
    for seq in range(1, 5):
        reg.record_telemetry(
            "pi4-a",
            telemetry(seq, 1000.0 + seq, sha=fp32.sha256, p50=0.016, p95=0.018, recipe="fp32"),
        )
    targets = parse_targets({"targets": {"max_accuracy_drop": 1.0, "p95_ms": 0.013}})
    gen = Generator(reg, "fusion", DATA / "fusionnet.keras", out, calibration=data,
                    validation=data, max_k=4)  # fmt: skip

    first = decide(build_context(reg, "fusion", cid, targets, current=fp32.id, generator=gen))
    assert first.action == "generate", first.reason
    assert first.evidence["generate"]["name"] == "selective-search"
    assert "int8" in {e["recipe"] for e in first.evidence["excluded"]}  # failed the budget
    done = gen.run("selective-search", 1.0)
    assert done.variants and done.detail["chosen"] == "selective-k1", done.to_dict()
    new = reg.variant(done.variants[-1])
    assert new is not None and new.recipe == "selective-k1" and Path(new.path).is_file()

    second = decide(build_context(reg, "fusion", cid, targets, current=fp32.id, generator=gen))
    assert second.action == "deploy" and second.variant == new.id, second.reason
    space = {s["step"]: s["state"] for s in second.evidence["search_space"]}
    assert space["selective-search"] == "tried"
