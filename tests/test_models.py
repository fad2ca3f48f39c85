"""The committed test models match MANIFEST.json and run as recorded on the active runtime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tflite
from tflite.BuiltinOperator import BuiltinOperator

from tests import modelzoo
from tests.models import evaluate
from tests.models.make_models import MODELS_DIR

pytestmark = pytest.mark.runtime

RUNNABLE = [name for name in modelzoo.DIGITS_MODELS if name not in modelzoo.UNRUNNABLE_MODELS]
MANIFEST = json.loads((MODELS_DIR / "MANIFEST.json").read_text())["files"]


def _runtime_label() -> str:
    name = modelzoo.active_runtime()
    return f"{name} {modelzoo.runtime_version(name)}"


def _accuracy(path: Path) -> float:
    x, labels = modelzoo.digits_data()
    interp = evaluate.interpreter(modelzoo.active_runtime(), path)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    assert tuple(inp["shape"]) == (1, 8, 8, 1)
    preds = []
    for sample in x:
        value: Any = sample[np.newaxis]
        scale, zero = inp["quantization"]
        if np.dtype(inp["dtype"]).kind != "f":
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale + zero), info.min, info.max)
        interp.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interp.invoke()
        scores = interp.get_tensor(out["index"])[0]
        assert scores.shape == (10,)
        preds.append(int(np.argmax(scores)))
    return float(np.mean(np.array(preds) == labels))


@pytest.fixture(scope="module")
def accuracies() -> dict[str, float]:
    return {name: _accuracy(modelzoo.model(name)) for name in RUNNABLE}


def test_manifest_matches_committed_files() -> None:
    on_disk = {
        p.relative_to(MODELS_DIR).as_posix()
        for p in [*MODELS_DIR.glob("*"), *MODELS_DIR.glob("legacy/*")]
        if p.suffix in (".tflite", ".npz", ".keras")
    }
    assert on_disk == set(MANIFEST)
    for rel, entry in MANIFEST.items():
        data = (MODELS_DIR / rel).read_bytes()
        assert len(data) == entry["size"], rel
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{rel} changed; regenerate"


def test_committed_models_stay_small() -> None:
    assert sum(entry["size"] for entry in MANIFEST.values()) < 1_000_000


def test_digits_data_is_the_held_out_split() -> None:
    x, labels = modelzoo.digits_data()
    assert x.dtype == np.float32 and x.shape == (360, 8, 8, 1)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert sorted(set(labels.tolist())) == list(range(10))
    assert np.bincount(labels).min() >= 35  # stratified: ~36 per class


def test_legacy_set_chosen_only_for_old_runtimes() -> None:
    legacy = modelzoo.model("digits_fp32").parent.name == "legacy"
    assert legacy == (modelzoo.active_runtime() == "tflite-runtime") or (
        modelzoo.active_runtime() == "tensorflow" and legacy == modelzoo.uses_legacy_models()
    )


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="digits_fp32"):
        modelzoo.model("digits_nope")


def test_fp32_digits_model_is_accurate(accuracies: dict[str, float]) -> None:
    assert accuracies["digits_fp32"] >= 0.9


@pytest.mark.parametrize("name", [n for n in RUNNABLE if n != "digits_fp32"])
def test_quantized_variants_stay_within_two_points(name: str, accuracies: dict[str, float]) -> None:
    assert accuracies[name] >= accuracies["digits_fp32"] - 0.02


@pytest.mark.parametrize("name", RUNNABLE)
def test_manifest_accuracy_is_what_the_runtime_measures(
    name: str, accuracies: dict[str, float]
) -> None:
    rel = modelzoo.model(name).relative_to(MODELS_DIR).as_posix()
    recorded = MANIFEST[rel]["results"].get(_runtime_label())
    if recorded is None:
        pytest.skip(f"MANIFEST has no result for {_runtime_label()}")
    assert recorded["loaded"] and recorded["accuracy"] == pytest.approx(accuracies[name], abs=1e-4)


@pytest.mark.parametrize("name", sorted(modelzoo.UNRUNNABLE_MODELS))
def test_custom_op_models_fail_cleanly_on_cpu(name: str) -> None:
    code = modelzoo.UNRUNNABLE_MODELS[name]
    with pytest.raises((RuntimeError, ValueError), match=f"unresolved custom op: {code}"):
        interp = evaluate.interpreter(modelzoo.active_runtime(), modelzoo.model(name))
        interp.allocate_tensors()


def test_edgetpu_model_looks_like_compiler_output() -> None:
    buf = modelzoo.model("digits_edgetpu").read_bytes()
    assert tflite.Model.ModelBufferHasIdentifier(buf, 0)
    m = tflite.Model.GetRootAsModel(buf, 0)
    assert m.OperatorCodesLength() == 1
    code = m.OperatorCodes(0)
    assert max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == BuiltinOperator.CUSTOM
    assert code.CustomCode() == b"edgetpu-custom-op"
    sg = m.Subgraphs(0)
    assert sg.OperatorsLength() == 1
    for index in (sg.Inputs(0), sg.Outputs(0)):
        tensor = sg.Tensors(index)
        assert tensor.Type() == tflite.TensorType.INT8
        assert tensor.Quantization().ScaleLength() == 1 and tensor.Quantization().Scale(0) > 0


@pytest.mark.parametrize("rel", sorted(r for r in MANIFEST if r.endswith(".tflite")))
def test_every_model_loads_or_fails_as_recorded(rel: str) -> None:
    recorded = MANIFEST[rel]["results"].get(_runtime_label())
    if recorded is None:
        pytest.skip(f"MANIFEST has no result for {_runtime_label()}")
    try:
        interp = evaluate.interpreter(modelzoo.active_runtime(), MODELS_DIR / rel)
        interp.allocate_tensors()
        interp.invoke()
        loaded, error = True, ""
    except (RuntimeError, ValueError) as exc:
        loaded, error = False, f"{type(exc).__name__}: {exc}".strip()
    assert loaded == recorded["loaded"], error
    if not loaded:
        assert error.splitlines()[0] == recorded["error"].splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_mobilenet_v2_runs(kind: str) -> None:
    path = modelzoo.mobilenet_v2(kind)
    interp = evaluate.interpreter(modelzoo.active_runtime(), path)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    assert tuple(inp["shape"]) == (1, 224, 224, 3)
    assert np.dtype(inp["dtype"]) == (np.float32 if kind == "fp32" else np.uint8)
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
    interp.invoke()
    out = interp.get_output_details()[0]
    assert interp.get_tensor(out["index"]).shape == (1, 1000)
