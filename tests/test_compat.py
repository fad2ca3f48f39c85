"""agent.runtime.compat: verdicts from the measured operator tables agree with what runtimes really
load."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.errors import IncompatibleModelError
from agent.runtime import compat
from agent.runtime.modelfile import BUILTIN_NAMES, inspect
from agent.runtime.optable import RUNTIMES, Check, build_probe_model, run_check, runtime_version

MODELS = Path(__file__).parent / "models"
ROOT = Path(__file__).resolve().parents[1]


def model_file(name: str, legacy: bool = False) -> Path:
    path = MODELS / ("legacy" if legacy else "") / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"{path} not generated (run tests/models/make_models.py)")
    return path


def installed(runtime: str) -> tuple[Any, str]:
    """(Interpreter class, version) of a runtime installed in this environment, else skip."""
    module = pytest.importorskip(RUNTIMES[runtime][0])
    try:
        version = runtime_version(runtime)
    except SystemExit:
        pytest.skip(f"{runtime} has no distribution metadata here")
    return module.Interpreter, version


RUNTIME_PARAMS = [
    pytest.param("ai-edge-litert", id="ai-edge-litert"),
    pytest.param("tflite-runtime", id="tflite-runtime"),
    pytest.param("tensorflow", id="tensorflow", marks=pytest.mark.host),
]


# --- tables -------------------------------------------------------------------------------------


def test_committed_tables_carry_provenance():
    found = {(t.runtime, t.version) for t in compat.tables()}
    assert {
        ("ai-edge-litert", "2.3.0"),
        ("tflite-runtime", "2.14.0"),
        ("tensorflow", "2.21.0"),
    } <= (found)
    for path in sorted(compat.DATA_DIR.glob("ops_*.json")):
        raw = json.loads(path.read_text())
        assert raw["generator"].startswith("python -m agent.runtime.optable --runtime ")
        assert raw["generated"] and raw["method"] and raw["schema_package"].startswith("tflite ")
        assert raw["crashes"] == []
        # The control custom op must have come out unresolved, or the method is broken.
        assert raw["custom"]["edgeloop-no-such-op"] is False
        assert path.name == f"ops_{raw['runtime']}_{raw['version']}.json"


def test_measured_difference_fully_connected():
    by_key = {(t.runtime, t.version): t for t in compat.tables()}
    assert max(by_key["tflite-runtime", "2.14.0"].builtin["FULLY_CONNECTED"]) == 10
    assert max(by_key["ai-edge-litert", "2.3.0"].builtin["FULLY_CONNECTED"]) >= 12


# --- verdicts -----------------------------------------------------------------------------------


def test_tf221_dynamic_int8_needs_fully_connected_v12():
    info = inspect(model_file("digits_dynamic_int8"))
    report = compat.check(info, "tflite-runtime", "2.14.0")
    assert not report.ok and report.checked
    assert report.problems == ["FULLY_CONNECTED v12 (tflite-runtime 2.14.0 resolves up to v10)"]
    assert compat.check(info, "ai-edge-litert", "2.3.0").ok
    with pytest.raises(IncompatibleModelError, match="FULLY_CONNECTED v12") as err:
        compat.ensure_compatible(info, "tflite-runtime", "2.14.0")
    assert err.value.code == "incompatible"


def test_tf221_fp32_digits_is_compatible_with_2_14():
    # Evidence, not folklore: this float model uses FULLY_CONNECTED v1 and 2.14 loads it.
    info = inspect(model_file("digits_fp32"))
    assert compat.check(info, "tflite-runtime", "2.14.0").ok
    compat.ensure_compatible(info, "tflite-runtime", "2.14.0")


def test_version_matching_exact_nearest_lower_and_unknown():
    info = inspect(model_file("digits_dynamic_int8"))
    exact = compat.check(info, "tflite-runtime", "2.14")
    assert exact.table_version == "2.14.0" and exact.notes == []
    lower = compat.check(info, "tflite-runtime", "2.14.1")
    assert lower.table_version == "2.14.0" and not lower.ok
    assert "used the one measured on tflite-runtime 2.14.0" in lower.notes[0]
    newer = compat.check(info, "ai-edge-litert", "2.4.1")
    assert newer.ok and newer.table_version == "2.3.0"
    unknown = compat.check(info, "tflite-runtime", "2.13.0")
    assert unknown.ok and not unknown.checked and unknown.table_version is None
    assert "not checked" in unknown.notes[0]
    assert not compat.check(info, "no-such-runtime", "1.0").checked


def test_edgetpu_model_needs_the_edgetpu_delegate():
    info = inspect(model_file("digits_edgetpu"))
    cpu = compat.check(info, "ai-edge-litert", "2.3.0")
    assert not cpu.ok
    assert cpu.problems[0].startswith("edgetpu-custom-op (custom op) needs the Edge TPU delegate")
    assert compat.check(info, "ai-edge-litert", "2.3.0", delegate="edgetpu").ok
    assert compat.check(info, "tflite-runtime", "2.14.0", delegate="edgetpu:usb:0").ok
    # Even without a table the delegate rule holds.
    assert not compat.check(info, "tflite-runtime", "2.10.0").ok


def test_unknown_custom_op_is_a_problem_unless_an_external_delegate_provides_it():
    info = inspect(model_file("digits_unknown_custom"))
    name = info.custom_ops[0]
    for delegate in ("cpu", "edgetpu"):
        report = compat.check(info, "ai-edge-litert", "2.3.0", delegate=delegate)
        assert not report.ok
        assert report.problems == [
            f"{name} (custom op) is not registered in ai-edge-litert 2.3.0; it needs a delegate "
            "or a custom op resolver that provides it"
        ]
    external = compat.check(info, "ai-edge-litert", "2.3.0", delegate="external")
    assert external.ok and name in external.notes[0]


def test_custom_op_the_runtime_registers_is_fine():
    info = inspect(build_probe_model(32, 1, "TFLite_Detection_PostProcess", with_node=True))
    assert compat.check(info, "tflite-runtime", "2.14.0").ok


def test_problem_wording_for_missing_and_gapped_operators():
    absent = inspect(build_probe_model(163, 1, with_node=True))  # STABLEHLO_ADD
    assert compat.check(absent, "tflite-runtime", "2.14.0").problems == [
        "STABLEHLO_ADD v1 (tflite-runtime 2.14.0 does not have this operator)"
    ]
    assert compat.check(absent, "ai-edge-litert", "2.3.0").ok
    gapped = inspect(build_probe_model(130, 1, with_node=True))  # BROADCAST_TO starts at v2
    assert compat.check(gapped, "tflite-runtime", "2.14.0").problems == [
        "BROADCAST_TO v1 (tflite-runtime 2.14.0 resolves only v2, v3)"
    ]
    unused = inspect(build_probe_model(9, 12))  # listed opcode without a node still fails to load
    assert not compat.check(unused, "tflite-runtime", "2.14.0").ok


def test_min_runtime_lists_every_table():
    info = inspect(model_file("digits_dynamic_int8"))
    rows = {(r["runtime"], r["version"]): r for r in compat.min_runtime(info)}
    assert set(rows) == {(t.runtime, t.version) for t in compat.tables()}
    assert rows["tflite-runtime", "2.14.0"]["ok"] is False
    assert "FULLY_CONNECTED v12" in rows["tflite-runtime", "2.14.0"]["problems"][0]
    assert rows["ai-edge-litert", "2.3.0"]["ok"] is True
    json.dumps(compat.min_runtime(info))
    json.dumps(compat.check(info, "tflite-runtime", "2.14.0").to_dict())


# --- against the real runtimes ------------------------------------------------------------------


def _loads(interpreter: Any, path: Path) -> tuple[bool, str]:
    try:
        interpreter(model_content=path.read_bytes()).allocate_tensors()
    except Exception as exc:
        return False, str(exc)
    return True, ""


def _real_models() -> list[Path]:
    paths = sorted(MODELS.glob("*.tflite")) + sorted((MODELS / "legacy").glob("*.tflite"))
    if not paths:
        pytest.skip("no test models generated")
    return paths


@pytest.mark.runtime
@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_verdict_agrees_with_real_load(runtime):
    interpreter, version = installed(runtime)
    checked = 0
    for path in _real_models():
        info = inspect(path)
        report = compat.check(info, runtime, version)
        loaded, error = _loads(interpreter, path)
        assert report.checked
        assert report.ok == loaded, f"{path.name} on {runtime} {version}: {report} vs {error!r}"
        for problem in report.problems:  # the named operator is the one the runtime names
            op = problem.split(" ", 1)[0]
            assert op in error, f"{path.name}: {problem!r} not in {error!r}"
        checked += 1
    assert checked >= 5


@pytest.mark.runtime
@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_table_matches_installed_runtime(runtime):
    """Re-probe the edges of a few operators: the committed table still describes this runtime."""
    interpreter, version = installed(runtime)
    table, note = compat.find_table(runtime, version)
    if table is None or note:
        pytest.skip(f"no exact table for {runtime} {version}")
    codes = {name: code for code, name in BUILTIN_NAMES.items()}
    for name in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX", "QUANTIZE"):
        top = max(table.builtin[name])
        assert run_check(interpreter, Check(codes[name], top))[0] == "resolved", name
        assert run_check(interpreter, Check(codes[name], top + 1))[0] == "missing", name


@pytest.mark.runtime
@pytest.mark.slow
def test_generator_reproduces_the_committed_table(tmp_path):
    runtime = next(
        (name for name in ("ai-edge-litert", "tflite-runtime") if _importable(name)), None
    )
    if runtime is None:
        pytest.skip("no TFLite runtime here")
    out = tmp_path / "t.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.runtime.optable",
            "--runtime",
            runtime,
            "--out",
            str(out),
            "--max-code",
            "12",
            "--max-version",
            "15",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=240,
    )
    fresh = json.loads(out.read_text())
    table, _ = compat.find_table(runtime, fresh["version"])
    assert table is not None
    for name, entry in fresh["builtin"].items():
        assert frozenset(entry["versions"]) == table.builtin[name], name
    assert fresh["custom"] == dict(table.custom)


def _importable(runtime: str) -> bool:
    try:
        importlib.import_module(RUNTIMES[runtime][0])
    except ImportError:
        return False
    return True


@pytest.mark.runtime
def test_tflite_runtime_214_rejects_fully_connected_v12_as_predicted():
    interpreter, version = installed("tflite-runtime")
    path = model_file("digits_dynamic_int8")  # the TF 2.21 set, not the legacy copy
    report = compat.check(inspect(path), "tflite-runtime", version)
    loaded, error = _loads(interpreter, path)
    assert not loaded
    assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" in error
    assert [p.split(" (")[0] for p in report.problems] == ["FULLY_CONNECTED v12"]
