"""The selective search (issue 11, item 3): after full int8 fails the accuracy budget on the
quantization-sensitive fusionnet, new selective candidates are generated, k = 1, 2, ...
operators kept in float, and the least float within the budget is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

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
