"""Runtime backends: discovery, preference, lazy import, CPU loading and error mapping.

Runs against whichever runtime is active (ai-edge-litert in /work/venv; tflite-runtime 2.14 in
/work/venv214 with EDGELOOP_RUNTIME=tflite-runtime).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.board.hardware import detect
from agent.errors import (
    EdgeloopError,
    IncompatibleModelError,
    ModelFileError,
    RuntimeUnavailableError,
)
from agent.runtime import (
    DEFAULT_PREFERENCE,
    Backend,
    get_backend,
    installed_runtimes,
    load_model,
)
from agent.runtime.modelfile import inspect
from agent.runtime.registry import preference_from_env
from tests.modelzoo import model

ROOT = Path(__file__).resolve().parent.parent
HWTREES = Path(__file__).resolve().parent / "hwtrees"
ALL_RUNTIMES = {"ai_edge_litert", "tflite_runtime", "tensorflow"}


def _op_count(path: Path) -> int:
    return sum(op.count for op in inspect(path).operators)


def test_importing_agent_runtime_imports_no_runtime() -> None:
    code = (
        "import sys, agent.runtime, agent.runtime.delegates;"
        f"print(sorted(m for m in {sorted(ALL_RUNTIMES)!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_installed_runtimes_reports_every_runtime_without_raising() -> None:
    infos = installed_runtimes()
    assert [i.name for i in infos] == list(DEFAULT_PREFERENCE)
    active = get_backend()
    by_name = {i.name: i for i in infos}
    assert by_name[active.name].available
    assert by_name[active.name].error is None
    assert active.version == importlib.metadata.version(active.name)
    for info in infos:
        json.dumps(info.to_dict())
        if not info.available:
            assert info.error and info.module in info.error
    quick = {i.name: i.available for i in installed_runtimes(check_import=False)}
    assert quick[active.name] is True


def test_missing_runtime_is_reported_not_raised_at_import() -> None:
    class Missing(Backend):
        name = "missing"
        module_name = "edgeloop_no_such_runtime_module"
        distributions = ("edgeloop-no-such-runtime",)

    backend = Missing()
    assert backend.installed_version() is None
    with pytest.raises(RuntimeUnavailableError, match="edgeloop_no_such_runtime_module"):
        backend.interpreter(model_path="x.tflite")
    with pytest.raises(RuntimeUnavailableError):  # cached failure, same error again
        backend.load_delegate("libx.so")


def test_unavailable_preferred_runtime_raises_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGELOOP_RUNTIME", raising=False)
    missing = [i.name for i in installed_runtimes() if not i.available]
    if not missing:
        pytest.skip("every runtime is installed here")
    with pytest.raises(RuntimeUnavailableError) as err:
        get_backend([missing[0]])
    assert missing[0] in err.value.message and err.value.hint


def test_preference_order_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    active = get_backend().name
    monkeypatch.delenv("EDGELOOP_RUNTIME", raising=False)
    assert preference_from_env(None) == list(DEFAULT_PREFERENCE)
    assert preference_from_env(["litert", "tf"]) == ["ai-edge-litert", "tensorflow"]
    # The first available in the given order wins.
    others = [i.name for i in installed_runtimes() if not i.available]
    assert get_backend([*others, active]).name == active
    # The environment overrides the argument.
    monkeypatch.setenv("EDGELOOP_RUNTIME", f"{active},tensorflow")
    assert get_backend(list(DEFAULT_PREFERENCE)[::-1]).name == active
    monkeypatch.setenv("EDGELOOP_RUNTIME", "no-such-runtime")
    with pytest.raises(RuntimeUnavailableError) as err:
        get_backend()
    assert err.value.code == "config"


@pytest.mark.runtime
def test_cpu_load_uses_xnnpack_big_cores_and_counts_nodes() -> None:
    path = model("digits_fp32")
    hw = detect(HWTREES / "rpi4b")
    loaded = load_model(path, "cpu", hardware=hw)
    assert loaded.delegate == "cpu" and loaded.device is None and loaded.fallback is None
    assert loaded.threads == hw.cpu.big_cores == 4
    assert loaded.runtime == get_backend().name
    assert loaded.nodes_total == _op_count(path)
    # XNNPACK takes every node of the float digits CNN.
    assert loaded.nodes_delegated == loaded.nodes_total
    assert loaded.init_ms > 0
    json.dumps(loaded.to_dict())
    assert "interpreter" not in loaded.to_dict()

    # Same numbers as the plain (no default delegate) kernels.
    backend = get_backend()
    plain = backend.interpreter(str(path), num_threads=1, xnnpack=False)
    plain.allocate_tensors()
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    outs = []
    for interp in (loaded.interpreter, plain):
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.runtime
def test_plain_kernels_delegate_nothing() -> None:
    from agent.runtime import nodes

    path = model("digits_fp32")
    interp = get_backend().interpreter(str(path), num_threads=1, xnnpack=False)
    before = nodes.snapshot(interp)
    interp.allocate_tensors()
    assert nodes.count(before, nodes.snapshot(interp), explicit=False) == (_op_count(path), 0)


@pytest.mark.runtime
def test_explicit_threads_and_env_hardware_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_model(model("digits_fp32"), "cpu", threads=1).threads == 1
    monkeypatch.setenv("EDGELOOP_HW_ROOT", str(HWTREES / "rpi4b"))
    assert load_model(model("digits_fp32"), "cpu").threads == 4


@pytest.mark.runtime
@pytest.mark.parametrize(
    "name", ["digits_fp32", "digits_fp16", "digits_dynamic_int8", "digits_int8", "digits_int16x8"]
)
def test_every_variant_loads_on_cpu(name: str) -> None:
    path = model(name)
    loaded = load_model(path, "cpu", threads=1)
    assert loaded.nodes_total == _op_count(path)
    assert loaded.nodes_delegated is not None
    assert 0 <= loaded.nodes_delegated <= loaded.nodes_total


@pytest.mark.runtime
@pytest.mark.parametrize(
    "content",
    [b"not a model at all " * 50, b"\x1c\x00\x00\x00TFL3", bytes(256)],
    ids=["text", "header-only", "zeros"],
)
def test_bad_bytes_are_model_file_errors(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError) as err:
        load_model(bad, "cpu", threads=1)
    assert str(bad) in err.value.message
    assert not isinstance(err.value.__cause__, EdgeloopError)  # the runtime's own error, chained


@pytest.mark.runtime
def test_missing_file_is_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.tflite", "cpu")


@pytest.mark.runtime
def test_unknown_custom_op_is_incompatible_not_runtime_error() -> None:
    with pytest.raises(IncompatibleModelError) as err:
        load_model(model("digits_unknown_custom"), "cpu", threads=1)
    assert "custom op" in err.value.message
    assert isinstance(err.value.__cause__, RuntimeError)
