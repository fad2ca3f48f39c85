"""The host converter on real models: every recipe with both backends, untidy sources (no
SignatureDefs, two inputs, dynamic batch), failures that do not stop the others, the cache,
and the Edge TPU step (unavailable here; a fake compiler script stands in for the command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("ai_edge_litert")

from agent.runtime.modelfile import inspect
from deploy.convert import BACKEND_CALLS, Converter, VariantCache, convert
from deploy.convert import edgetpu as edgetpu_mod
from deploy.convert.flatbuffer import has_signature, strip_signatures
from tests.models.make_models import DATA_FILE, MODELS_DIR

pytestmark = pytest.mark.host

DATA = MODELS_DIR / DATA_FILE
KERAS = MODELS_DIR / "digits.keras"
FLOAT_ACCURACY = 0.9833
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(edgetpu_mod.ENV_COMPILER, raising=False)


@pytest.fixture(scope="module")
def fp32_tflite() -> Path:
    return MODELS_DIR / "digits_fp32.tflite"  # the TF 2.21 model (host tests run on LiteRT)


@pytest.fixture(scope="module")
def aiq_results(tmp_path_factory: pytest.TempPathFactory, fp32_tflite: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("aiq")
    conv = Converter(
        fp32_tflite, calibration=DATA, validation=DATA, cache=VariantCache(root / "cache")
    )
    return {r.recipe: r for r in conv.convert_all("all", root / "out")}


@pytest.fixture(scope="module")
def tf_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("tf")
    cache = VariantCache(root / "cache")
    out: dict[str, Any] = {}
    for backend in ("tf", "aiq"):
        conv = Converter(KERAS, calibration=DATA, validation=DATA, backend=backend, cache=cache)
        out[backend] = {r.recipe: r for r in conv.convert_all("all", root / backend)}
    return out


def _check_common(results: dict[str, Any]) -> None:
    fp32 = results["fp32"]
    assert fp32.ok and fp32.quantization == "fp32"
    assert fp32.evaluation.accuracy == pytest.approx(FLOAT_ACCURACY, abs=0.001)
    fp16 = results["fp16"]
    assert fp16.ok and fp16.quantization == "fp16"
    assert fp16.size < 0.6 * fp32.size
    assert fp16.evaluation.accuracy == fp32.evaluation.accuracy
    assert fp16.evaluation.agreement == 1.0 and fp16.evaluation.snr_db > 60
    dyn = results["dynamic-int8"]
    assert dyn.ok and dyn.quantization == "dynamic-int8" and dyn.size < 0.4 * fp32.size
    for name in ("int8", "selective"):
        r = results[name]
        assert r.ok, r.error
        assert r.inputs[0]["dtype"] == "int8"
        assert r.evaluation.accuracy >= fp32.evaluation.accuracy - 0.02, name
        assert r.evaluation.agreement >= 0.98
    assert results["int8"].quantization == "int8"
    assert results["int16x8"].ok and results["int16x8"].quantization == "int16x8"
    sel = results["selective"]
    assert sel.quantization == "mixed" and sel.details["kept_float"]
    assert {"QUANTIZE", "DEQUANTIZE"} <= {op["name"] for op in sel.operators}
    assert results["edgetpu"].status == "unavailable"
    assert "edgetpu_compiler is not on PATH" in results["edgetpu"].error
    for r in results.values():
        if r.ok:
            assert r.min_runtime and Path(r.path).is_file()
            assert inspect(r.path).sha256 == r.sha256


def test_every_recipe_on_a_float_tflite_with_ai_edge_quantizer(aiq_results: dict[str, Any]) -> None:
    _check_common(aiq_results)
    assert {r.backend for r in aiq_results.values() if r.ok} == {"aiq"}
    failed = aiq_results["int8-uint8io"]
    assert failed.status == "failed"
    assert failed.error.startswith("recipe int8-uint8io (aiq)") and "uint8" in failed.error
    json.dumps([r.to_dict() for r in aiq_results.values()])  # JSON-safe


def test_every_recipe_on_the_keras_source_with_tensorflow(tf_results: dict[str, Any]) -> None:
    results = tf_results["tf"]
    _check_common(results)
    assert results["int8"].backend == "tf" and results["selective"].backend == "tf+aiq"
    uint8 = results["int8-uint8io"]
    assert uint8.ok and uint8.inputs[0]["dtype"] == "uint8" and uint8.outputs[0]["dtype"] == "uint8"
    assert uint8.evaluation.accuracy >= FLOAT_ACCURACY - 0.02
    assert results["int16x8"].inputs[0]["dtype"] == "float32"  # TF keeps float I/O
    # the Keras source has a free batch axis: the variants keep it and evaluate
    assert results["int8"].inputs[0]["shape"][0] == -1


def test_keras_source_through_ai_edge_quantizer(tf_results: dict[str, Any]) -> None:
    results = tf_results["aiq"]
    _check_common(results)
    assert results["fp32"].backend == "tf"
    assert results["int8"].backend == "tf+aiq" and results["int16x8"].inputs[0]["dtype"] == "int16"


def test_float_tflite_without_signatures_gets_a_default_one(
    tmp_path: Path, fp32_tflite: Path
) -> None:
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(strip_signatures(fp32_tflite.read_bytes()))
    assert not has_signature(bare.read_bytes())
    r: Any = convert(bare, "int8", tmp_path / "int8.tflite", DATA, DATA,
                cache=VariantCache(tmp_path / "c"))  # fmt: skip
    assert r.ok, r.error
    assert any("default serving_default signature" in n for n in r.notes)
    assert inspect(r.path).signatures[0]["key"] == "serving_default"
    assert r.evaluation.accuracy >= FLOAT_ACCURACY - 0.02


def _two_input_model(tmp_path: Path) -> tuple[Path, Path]:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    a = keras.Input((6,), name="alpha")
    b = keras.Input((3,), name="beta")
    x = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(a),
                                    keras.layers.Dense(8, activation="relu")(b)])  # fmt: skip
    out = keras.layers.Dense(4, activation="softmax")(x)
    model = keras.Model([a, b], out)
    path = tmp_path / "two.keras"
    model.save(path)
    data = tmp_path / "two.npz"
    # saved in the "wrong" order: matching must go by name
    np.savez(data, beta=rng.random((40, 3), dtype=np.float32),
             alpha=rng.random((40, 6), dtype=np.float32))  # fmt: skip
    return path, data


def test_two_input_model_both_backends(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    source, data = _two_input_model(tmp_path)
    for backend in ("tf", "aiq"):
        conv = Converter(source, calibration=data, validation=data, backend=backend,
                         cache=VariantCache(tmp_path / "c"))  # fmt: skip
        results: list[Any] = conv.convert_all(["fp32", "int8", "dynamic-int8"], tmp_path / backend)
        for r in results:
            assert r.ok, r.error
            assert len(r.inputs) == 2
            assert r.evaluation.samples == 40 and r.evaluation.snr_db > 15, r.recipe


def test_a_failing_recipe_is_reported_and_the_others_go_on(
    tmp_path: Path, fp32_tflite: Path
) -> None:
    recipes = {"schema": 1, "recipes": [
        {"name": "fp32", "kind": "fp32"},
        {"name": "broken", "kind": "int8", "calibration": True, "io": "int8",
         "options": {"aiq_recipe": [{"regex": ".*", "operation": "NO_SUCH_OP",
                                     "algorithm_key": "min_max_uniform_quantize",
                                     "op_config": {}}]}},
        {"name": "needs-data", "kind": "int16x8", "calibration": True},
        {"name": "fp16", "kind": "fp16"},
    ]}  # fmt: skip
    file = tmp_path / "recipes.json"
    file.write_text(json.dumps(recipes))
    conv = Converter(fp32_tflite, recipes_file=file, cache=VariantCache(tmp_path / "c"))
    results: dict[str, Any] = {r.recipe: r for r in conv.convert_all("all", tmp_path / "out")}
    assert results["fp32"].ok and results["fp16"].ok
    broken = results["broken"]
    assert broken.status == "failed" and broken.error.startswith("recipe broken (aiq")
    assert "KeyError" in broken.error  # ai-edge-quantizer rejects the malformed recipe
    assert results["needs-data"].status == "failed"
    assert "needs calibration data" in results["needs-data"].error
    assert results["needs-data"].hint and "--calibration" in results["needs-data"].hint


def test_operator_is_taken_from_converter_errors() -> None:
    from deploy.convert import tf_backend

    err = RuntimeError("Quantization not yet supported for op: 'CUMSUM'.")
    assert tf_backend.error_operator(err) == "CUMSUM"
    err = RuntimeError("loc(fused[...]): 'tf.Erfinv' op is neither a custom op nor a flex op")
    assert tf_backend.error_operator(err) == "Erfinv"


def test_converting_twice_is_free(tmp_path: Path, fp32_tflite: Path) -> None:
    cache = VariantCache(tmp_path / "cache")
    before = sum(BACKEND_CALLS.values())
    first: Any = convert(fp32_tflite, "int8", tmp_path / "a.tflite", DATA, DATA, cache=cache)
    assert sum(BACKEND_CALLS.values()) == before + 1 and not first.cached
    second: Any = convert(fp32_tflite, "int8", tmp_path / "b.tflite", DATA, DATA, cache=cache)
    assert sum(BACKEND_CALLS.values()) == before + 1, "second conversion ran a backend"
    assert second.cached and second.sha256 == first.sha256
    assert second.evaluation == first.evaluation
    # other calibration data is another variant
    other = tmp_path / "calib.npz"
    with np.load(DATA) as npz:
        np.savez(other, calib=npz["calib"][:50])
    third: Any = convert(fp32_tflite, "int8", tmp_path / "c.tflite", other, DATA, cache=cache)
    assert not third.cached and sum(BACKEND_CALLS.values()) == before + 2


FAKE_COMPILER = """#!{python}
import shutil, sys, json, pathlib
args = sys.argv[1:]
if args == ["--version"]:
    print("Edge TPU Compiler version 0.0.0-fake")
    sys.exit(0)
pathlib.Path({record!r}).write_text(json.dumps(args))
out = pathlib.Path(args[args.index("-o") + 1])
model = pathlib.Path(args[-1])
shutil.copy(model, out / (model.stem + "_edgetpu.tflite"))
(out / (model.stem + "_edgetpu.log")).write_text("fake compiler: copied, nothing mapped")
"""


def test_edgetpu_with_a_fake_compiler_on_path(
    tmp_path: Path, fp32_tflite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "args.json"
    script = bindir / "edgetpu_compiler"
    script.write_text(FAKE_COMPILER.format(python=sys.executable, record=str(record)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r: Any = convert(fp32_tflite, "edgetpu", tmp_path / "tpu.tflite", DATA, DATA,
                cache=VariantCache(tmp_path / "c"))  # fmt: skip
    assert r.ok, r.error
    assert r.backend == "aiq+edgetpu_compiler"
    args = json.loads(record.read_text())
    assert args[:2] == ["-s", "-o"] and args[-1].endswith("model.tflite")
    assert r.tools["edgetpu_compiler"] == "Edge TPU Compiler version 0.0.0-fake"
    assert "nothing mapped" in r.details["compiler_log"]
    assert r.quantization == "int8" and not r.is_edgetpu  # the fake maps nothing
    # a real compiled model cannot run on the host CPU; the fake's copy can, so it is evaluated
    assert r.evaluation.accuracy >= FLOAT_ACCURACY - 0.02


def test_edgetpu_unavailable_without_compiler(
    tmp_path: Path, fp32_tflite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    before = sum(BACKEND_CALLS.values())
    r: Any = convert(fp32_tflite, "edgetpu", tmp_path / "tpu.tflite", DATA,
                cache=VariantCache(tmp_path / "c"))  # fmt: skip
    assert r.status == "unavailable" and not r.ok
    assert "edgetpu_compiler is not on PATH" in r.error and "coral.ai" in (r.hint or "")
    assert sum(BACKEND_CALLS.values()) == before, "no int8 work for an unavailable compiler"
    assert not (tmp_path / "tpu.tflite").exists()


def test_compiler_command_line() -> None:
    cmd = edgetpu_mod.command(
        "edgetpu_compiler", Path("/m/x.tflite"), Path("/o"), ["-s", "-m", "13"]
    )
    assert cmd == ["edgetpu_compiler", "-s", "-m", "13", "-o", "/o", "/m/x.tflite"]


RUNNER = (
    "import argparse, sys\n"
    "from deploy.convert.cli import add_convert_parser\n"
    "p = argparse.ArgumentParser(); sub = p.add_subparsers(dest='command', required=True)\n"
    "add_convert_parser(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def test_cli_json_output_is_clean_json(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    env = {**os.environ, "EDGELOOP_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-c", RUNNER, "convert", str(KERAS), "--recipe", "fp32,int8",
           "--out", str(tmp_path / "out"), "--calibration", f"{DATA}#calib",
           "--validation", str(DATA), "--json"]  # fmt: skip
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = json.loads(proc.stdout)  # TensorFlow's own prints went to stderr
    assert [r["recipe"] for r in body] == ["fp32", "int8"]
    assert body[1]["evaluation"]["accuracy"] >= FLOAT_ACCURACY - 0.02
    assert (tmp_path / "out" / "digits_int8.tflite").is_file()
