"""agent.runtime.sandbox: a malformed or hostile model cannot take the parent down; every ending is
named.

Each malformed file is probed twice: as the agent does it (``precheck``: inspection and
compatibility in the parent first) and with the raw bytes handed straight to the interpreter in
the child (``precheck=False``), which is where LiteRT can SIGSEGV. Either way this test process
must survive and the result must say what happened.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.runtime.sandbox import ProbeResult, probe_model
from tests.modelzoo import model

pytestmark = pytest.mark.runtime

TIMEOUT_S = 60.0
NOT_A_MODEL = {"model_file", "load_failed", "crashed", "incompatible"}


def _good() -> bytes:
    return model("digits_fp32").read_bytes()


def _largest_buffer_offset(data: bytes) -> tuple[int, int]:
    """(file offset, length) of the biggest weight buffer, found with the schema package."""
    import tflite

    m = tflite.Model.GetRootAsModel(data, 0)
    best = (0, 0)
    for i in range(m.BuffersLength()):
        buf = m.Buffers(i)
        if buf.DataLength() > best[1]:
            tab = buf._tab
            best = (tab.Vector(tab.Offset(4)), buf.DataLength())
    assert best[1] > 0, "the test model has no weight buffer"
    return best


def _flip_weight(data: bytes) -> bytes:
    offset, length = _largest_buffer_offset(data)
    out = bytearray(data)
    out[offset + length // 2] ^= 0xFF
    return bytes(out)


def _flip_vtable(data: bytes) -> bytes:
    """Corrupt the root table's vtable entry for ``subgraphs`` (field 2)."""
    root = struct.unpack_from("<I", data, 0)[0]
    vtable = root - struct.unpack_from("<i", data, root)[0]
    entry = vtable + 4 + 2 * 2
    out = bytearray(data)
    out[entry] ^= 0x5A
    return bytes(out)


MALFORMED: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "header_8_bytes": lambda: _good()[:8],
    "truncated_half": lambda: _good()[: len(_good()) // 2],
    "random_bytes": lambda: np.random.default_rng(3).bytes(len(_good())),
    "flipped_vtable_byte": lambda: _flip_vtable(_good()),
}


def _check_reported(result: ProbeResult) -> None:
    """What every failed probe owes the operator: a code, a message, the signal if any."""
    assert not result.ok
    assert result.message.strip()
    if result.code == "crashed":
        assert result.signal is not None or result.exit_code is not None
    if result.signal is not None:
        assert result.signal.startswith("SIG")
        assert result.signal in result.message or result.code == "timeout"
    assert result.to_dict()["code"] == result.code


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "raw"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_is_reported_and_parent_survives(
    tmp_path: Path, case: str, precheck: bool
) -> None:
    path = tmp_path / f"{case}.tflite"
    path.write_bytes(MALFORMED[case]())
    pid = os.getpid()
    result = probe_model(path, "cpu", threads=1, timeout_s=TIMEOUT_S, precheck=precheck)
    assert os.getpid() == pid
    assert result.code in NOT_A_MODEL, result
    _check_reported(result)
    if precheck and case in ("empty", "header_8_bytes", "random_bytes"):
        # Caught by the flatbuffer inspection, no child started.
        assert result.code == "model_file" and result.stage is None


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "raw"])
def test_flipped_weight_byte_still_loads_and_is_checked(tmp_path: Path, precheck: bool) -> None:
    path = tmp_path / "flipped_weight.tflite"
    path.write_bytes(_flip_weight(_good()))
    result = probe_model(path, "cpu", threads=1, timeout_s=TIMEOUT_S, precheck=precheck)
    # A weight is just a number: the model still runs; its outputs are still checked.
    assert result.code in {"ok", "bad_output"}, result
    if result.code == "bad_output":
        assert "NaN" in result.message
    else:
        assert all(o["finite"] for o in result.outputs)


def test_unknown_custom_op_fails_to_load_with_its_name() -> None:
    result = probe_model(model("digits_unknown_custom"), "cpu", threads=1, timeout_s=TIMEOUT_S)
    assert result.code in {"load_failed", "incompatible"}, result
    _check_reported(result)
    assert "EdgeloopNoSuchOp" in result.message


def test_edgetpu_model_on_cpu_says_it_needs_the_edge_tpu() -> None:
    result = probe_model(model("digits_edgetpu"), "cpu", threads=1, timeout_s=TIMEOUT_S)
    assert result.code in {"load_failed", "incompatible"}, result
    _check_reported(result)
    assert "edge tpu" in result.message.lower() or "edgetpu" in result.message.lower()


def probe_hooked(mode: str, timeout_s: float = TIMEOUT_S) -> ProbeResult:
    """Probe digits_fp32 on the CPU with the sandbox's test hook ``EDGELOOP_SANDBOX_CRASH``."""
    return probe_model(
        model("digits_fp32"),
        "cpu",
        threads=1,
        timeout_s=timeout_s,
        extra_env={"EDGELOOP_SANDBOX_CRASH": mode},
    )


@pytest.mark.parametrize(("hook", "signal_name"), [("segv", "SIGSEGV"), ("abort", "SIGABRT")])
def test_crash_hook_signal_is_named(hook: str, signal_name: str) -> None:
    result = probe_hooked(hook)
    assert result.code == "crashed"
    assert result.signal == signal_name
    assert result.exit_code is None
    assert result.stage == "invoke"  # it loaded, then died
    assert signal_name in result.message


def test_child_exit_without_result_reports_exit_code() -> None:
    result = probe_hooked("exit")
    assert (result.code, result.signal, result.exit_code) == ("crashed", None, 3)
    assert "code 3" in result.message


def test_hang_is_killed_at_the_timeout() -> None:
    timeout_s = 20.0
    started = time.monotonic()
    result = probe_hooked("hang", timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    assert result.code == "timeout"
    assert result.stage == "invoke"  # it hung after loading, not during start-up
    assert str(int(timeout_s)) in result.message
    assert timeout_s <= elapsed < timeout_s + 10.0


def test_nan_output_is_bad_output() -> None:
    result = probe_hooked("nan")
    assert result.code == "bad_output"
    assert "NaN" in result.message and "shape" in result.message


def test_memory_limit_applies_to_the_child() -> None:
    # 64 MB of address space cannot even hold numpy: the child fails, the parent reports it.
    result = probe_model(model("digits_fp32"), "cpu", threads=1, timeout_s=TIMEOUT_S, memory_mb=64)
    _check_reported(result)
    assert result.code in {"load_failed", "crashed"}
    assert result.stage in ("start", "import")
    assert "64 MB" in result.message or result.signal is not None


def test_missing_file_is_model_file() -> None:
    result = probe_model("/nonexistent/model.tflite")
    assert result.code == "model_file" and not result.ok


def test_good_model_runs_with_finite_outputs() -> None:
    result = probe_model(model("digits_fp32"), "cpu", threads=1, timeout_s=TIMEOUT_S)
    assert result.ok and result.code == "ok", result
    assert result.init_ms is not None and result.init_ms > 0
    assert result.invoke_ms is not None and result.invoke_ms > 0
    assert [o["shape"] for o in result.outputs] == [[1, 10]]
    assert all(o["finite"] for o in result.outputs)
    assert result.loaded is not None and result.loaded["delegate"] == "cpu"
    assert result.signal is None and result.exit_code == 0
