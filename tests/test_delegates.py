"""Delegate choice, proven through the real ``load_delegate`` with a compiled stub plugin.

The stub (tests/delegate_stub/stub_delegate.c) implements the TFLite external delegate ABI,
records the options it receives and claims no node unless told to (``claim``). It stands in for
libedgetpu on the very code path the Edge TPU uses: ``load_model(..., "edgetpu:usb:1")`` with the
library taken from EDGELOOP_EDGETPU_LIB and the hardware from a captured Raspberry Pi 4 + USB
Coral tree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from agent.board.hardware import HardwareInfo, detect
from agent.errors import ConfigError, DelegateError, EdgeloopError, IncompatibleModelError
from agent.runtime import DelegateRequest, find_edgetpu_library, get_backend, load_model
from agent.runtime.edgetpu import EDGETPU_CUSTOM_OP
from agent.runtime.modelfile import inspect
from tests.delegate_stub.build import stub_or_skip
from tests.modelzoo import model

HWTREES = Path(__file__).resolve().parent / "hwtrees"


@pytest.fixture(scope="session")
def stub_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stub_or_skip(tmp_path_factory.mktemp("stub"))


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stub_record.txt"
    monkeypatch.setenv("STUB_DELEGATE_RECORD", str(path))
    monkeypatch.delenv("STUB_DELEGATE_CLAIM", raising=False)
    monkeypatch.delenv("STUB_DELEGATE_FAIL", raising=False)
    return path


@pytest.fixture
def as_libedgetpu(stub_lib: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stub installed as "libedgetpu" via the documented override."""
    monkeypatch.setenv("EDGELOOP_EDGETPU_LIB", str(stub_lib))
    return stub_lib


@pytest.fixture(scope="module")
def coral() -> HardwareInfo:
    hw = detect(HWTREES / "rpi4b-coral-usb")
    assert [(a.kind, a.device) for a in hw.accelerators] == [("edgetpu", "usb:0")]
    return hw


@pytest.fixture(scope="module")
def cpu_only() -> HardwareInfo:
    hw = detect(HWTREES / "rpi4b")
    assert hw.accelerators == []
    return hw


def calls(record: Path) -> list[dict[str, str]]:
    """One dict of options per tflite_plugin_create_delegate call the stub saw."""
    if not record.exists():
        return []
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in record.read_text().splitlines():
        if line == "--":
            out.append(current)
            current = {}
        else:
            key, _, value = line.partition("=")
            current[key] = value
    return out


def run_once(interp: object) -> np.ndarray:
    detail = interp.get_input_details()[0]  # type: ignore[attr-defined]
    x = np.zeros(detail["shape"], dtype=detail["dtype"])
    interp.set_tensor(detail["index"], x)  # type: ignore[attr-defined]
    interp.invoke()  # type: ignore[attr-defined]
    out = interp.get_output_details()[0]  # type: ignore[attr-defined]
    return np.array(interp.get_tensor(out["index"]))  # type: ignore[attr-defined]


# --- request parsing (no interpreter) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "device", "library"),
    [
        ("auto", "auto", None, None),
        ("cpu", "cpu", None, None),
        ("edgetpu", "edgetpu", None, None),
        ("edgetpu:usb", "edgetpu", "usb", None),
        ("edgetpu:usb:1", "edgetpu", "usb:1", None),
        ("edgetpu:pci:0", "edgetpu", "pci:0", None),
        ("edgetpu::1", "edgetpu", ":1", None),
        ("external:/opt/x/libd.so", "external", None, "/opt/x/libd.so"),
    ],
)
def test_parse_requests(text: str, kind: str, device: str | None, library: str | None) -> None:
    req = DelegateRequest.parse(text)
    assert (req.kind, req.device, req.library) == (kind, device, library)
    assert str(req) == text


def test_parse_external_query_options_and_explicit_options_win() -> None:
    req = DelegateRequest.parse("external:/l.so?a=1&device=usb:2", options={"a": "2"})
    assert dict(req.options) == {"a": "2", "device": "usb:2"} and req.device == "usb:2"


@pytest.mark.parametrize("text", ["gpu", "edgetpu:usb:x", "edgetpu:tpu", "external:", "cpu:2"])
def test_parse_rejects_bad_requests(text: str) -> None:
    with pytest.raises(ConfigError):
        DelegateRequest.parse(text)


def test_find_edgetpu_library_searches_lib_dirs_under_root(tmp_path: Path) -> None:
    assert find_edgetpu_library(tmp_path) is None
    lib = tmp_path / "usr/lib/aarch64-linux-gnu/libedgetpu.so.1"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert find_edgetpu_library(tmp_path) == str(lib)


# --- the Edge TPU path, with the stub as libedgetpu -------------------------------------------


@pytest.mark.runtime
def test_explicit_edgetpu_loads_library_with_pycoral_device_option(
    as_libedgetpu: Path, record: Path, coral: HardwareInfo
) -> None:
    path = model("digits_fp32")
    loaded = load_model(path, "edgetpu:usb:1", hardware=coral)
    assert calls(record) == [{"device": "usb:1"}]
    assert (loaded.delegate, loaded.device, loaded.library) == (
        "edgetpu",
        "usb:1",
        str(as_libedgetpu),
    )
    assert loaded.fallback is None
    assert loaded.threads == coral.cpu.big_cores
    # The stub claims nothing: all model nodes stay with the CPU.
    assert loaded.nodes_total == sum(op.count for op in inspect(path).operators)
    assert loaded.nodes_delegated == 0
    cpu = load_model(path, "cpu", hardware=coral)
    np.testing.assert_allclose(
        run_once(loaded.interpreter), run_once(cpu.interpreter), rtol=1e-4, atol=1e-5
    )


@pytest.mark.runtime
def test_native_stderr_of_delegate_is_captured_not_leaked(
    as_libedgetpu: Path, record: Path, coral: HardwareInfo, capfd: pytest.CaptureFixture[str]
) -> None:
    loaded = load_model(model("digits_fp32"), "edgetpu:usb", hardware=coral)
    assert "stub_delegate: create with 1 option(s)" in loaded.native_log
    assert "stub_delegate" not in capfd.readouterr().err


@pytest.mark.runtime
def test_auto_picks_edgetpu_for_compiled_model_when_coral_present(
    as_libedgetpu: Path, record: Path, coral: HardwareInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_DELEGATE_CLAIM", EDGETPU_CUSTOM_OP)  # take it like libedgetpu does
    path = model("digits_edgetpu")
    info = inspect(path)
    assert info.is_edgetpu
    loaded = load_model(path, "auto", hardware=coral, info=info)
    assert calls(record) == [{"device": "usb:0"}]
    assert (loaded.delegate, loaded.device, loaded.fallback) == ("edgetpu", "usb:0", None)
    n_custom = sum(op.count for op in info.operators if op.name == EDGETPU_CUSTOM_OP)
    assert n_custom >= 1
    assert loaded.nodes_delegated == n_custom
    run_once(loaded.interpreter)  # the delegate kernel runs (it computes nothing)


def auto_edgetpu_failure(
    hardware: HardwareInfo, caplog: pytest.LogCaptureFixture
) -> pytest.ExceptionInfo[IncompatibleModelError]:
    """Load the Edge TPU model with ``"auto"`` on ``hardware`` (warnings captured); it must
    raise IncompatibleModelError."""
    with caplog.at_level(logging.WARNING), pytest.raises(IncompatibleModelError) as err:
        load_model(model("digits_edgetpu"), "auto", hardware=hardware)
    return err


@pytest.mark.runtime
def test_auto_edgetpu_model_when_delegate_takes_nothing_fails_as_incompatible(
    as_libedgetpu: Path, record: Path, coral: HardwareInfo, caplog: pytest.LogCaptureFixture
) -> None:
    err = auto_edgetpu_failure(coral, caplog)
    assert calls(record) == [{"device": "usb:0"}]  # the Edge TPU was tried first
    assert EDGETPU_CUSTOM_OP in err.value.message
    assert "Edge TPU delegate unusable" in (err.value.hint or "")
    assert "delegate fallback to cpu" in caplog.text


@pytest.mark.runtime
def test_auto_plain_model_with_coral_falls_back_to_cpu_with_reason(
    as_libedgetpu: Path, record: Path, coral: HardwareInfo, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = load_model(model("digits_int8"), "auto", hardware=coral)
    assert loaded.delegate == "cpu"
    assert loaded.fallback is not None and "edgetpu_compiler" in loaded.fallback
    assert loaded.fallback in caplog.text
    assert calls(record) == []  # never loaded the Edge TPU library


@pytest.mark.runtime
def test_auto_plain_model_without_accelerator_is_cpu_without_fallback(
    cpu_only: HardwareInfo,
) -> None:
    loaded = load_model(model("digits_fp32"), "auto", hardware=cpu_only)
    assert (loaded.delegate, loaded.fallback) == ("cpu", None)


@pytest.mark.runtime
def test_auto_edgetpu_model_without_accelerator_fails_cleanly_with_reason(
    as_libedgetpu: Path, record: Path, cpu_only: HardwareInfo, caplog: pytest.LogCaptureFixture
) -> None:
    err = auto_edgetpu_failure(cpu_only, caplog)
    assert isinstance(err.value, EdgeloopError) and isinstance(err.value.__cause__, RuntimeError)
    assert "no Edge TPU was found" in (err.value.hint or "")
    assert "no Edge TPU was found" in caplog.text
    assert calls(record) == []


@pytest.mark.runtime
def test_auto_with_coral_but_no_libedgetpu_says_install_it(
    record: Path, coral: HardwareInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGELOOP_EDGETPU_LIB", raising=False)
    monkeypatch.setattr("agent.runtime.edgetpu.find_edgetpu_library", lambda root="/": None)
    with pytest.raises(IncompatibleModelError) as err:
        load_model(model("digits_edgetpu"), "auto", hardware=coral)
    assert "libedgetpu1-std" in (err.value.hint or "")


@pytest.mark.runtime
def test_explicit_edgetpu_without_library_is_delegate_error(
    coral: HardwareInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGELOOP_EDGETPU_LIB", raising=False)
    monkeypatch.setattr("agent.runtime.edgetpu.find_edgetpu_library", lambda root="/": None)
    with pytest.raises(DelegateError) as err:
        load_model(model("digits_fp32"), "edgetpu:usb:1", hardware=coral)
    assert "usb:1" in err.value.message and "libedgetpu" in err.value.message
    assert "libedgetpu1-std" in (err.value.hint or "")


@pytest.mark.runtime
def test_explicit_edgetpu_with_unopenable_library_names_it(
    tmp_path: Path, coral: HardwareInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = tmp_path / "libedgetpu.so.1"
    monkeypatch.setenv("EDGELOOP_EDGETPU_LIB", str(absent))
    with pytest.raises(DelegateError) as err:
        load_model(model("digits_fp32"), "edgetpu:pci:0", hardware=coral)
    msg = err.value.message
    assert str(absent) in msg and "pci:0" in msg and get_backend().name in msg


@pytest.mark.runtime
def test_stub_told_to_fail_is_delegate_error_with_its_report(
    as_libedgetpu: Path, record: Path, coral: HardwareInfo
) -> None:
    req = DelegateRequest.parse("edgetpu:usb:1", options={"fail": "1"})
    with pytest.raises(DelegateError) as err:
        load_model(model("digits_fp32"), req, hardware=coral)
    msg = err.value.message
    assert "told to fail (fail=1)" in msg  # what the plugin passed to report_error
    assert str(as_libedgetpu) in msg and "usb:1" in msg and get_backend().name in msg
    assert "stub_delegate: create with 2 option(s)" in msg  # captured native stderr
    assert isinstance(err.value.__cause__, DelegateError)
    assert calls(record) == [{"fail": "1", "device": "usb:1"}]


@pytest.mark.runtime
def test_auto_falls_back_when_libedgetpu_fails_to_create(
    as_libedgetpu: Path, record: Path, monkeypatch: pytest.MonkeyPatch, coral: HardwareInfo
) -> None:
    monkeypatch.setenv("STUB_DELEGATE_FAIL", "1")
    loaded = load_model(model("digits_fp32"), "auto", hardware=coral)  # plain model: no attempt
    assert loaded.delegate == "cpu"
    with pytest.raises(IncompatibleModelError) as err:
        load_model(model("digits_edgetpu"), "auto", hardware=coral)
    assert "told to fail" in (err.value.hint or "")


# --- any external delegate ---------------------------------------------------------------------


@pytest.mark.runtime
def test_external_delegate_passes_options_through(stub_lib: Path, tmp_path: Path) -> None:
    rec = tmp_path / "ext.txt"
    req = DelegateRequest.parse(
        f"external:{stub_lib}?record_to={rec}&cache_dir=/tmp/x", options={"priority": "high"}
    )
    loaded = load_model(model("digits_fp32"), req, threads=1)
    assert calls(rec) == [{"record_to": str(rec), "cache_dir": "/tmp/x", "priority": "high"}]
    assert (loaded.delegate, loaded.library, loaded.threads) == ("external", str(stub_lib), 1)
    assert loaded.nodes_delegated == 0
    run_once(loaded.interpreter)


@pytest.mark.runtime
def test_external_delegate_failure_is_delegate_error(stub_lib: Path) -> None:
    with pytest.raises(DelegateError, match="told to fail"):
        load_model(model("digits_fp32"), f"external:{stub_lib}?fail=1", threads=1)


@pytest.mark.runtime
def test_external_delegate_on_broken_model_is_model_file_error(
    stub_lib: Path, tmp_path: Path
) -> None:
    from agent.errors import ModelFileError

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all " * 50)
    with pytest.raises(ModelFileError):
        load_model(bad, f"external:{stub_lib}", threads=1)
