"""Choose a delegate, load the model on it, and say what happened.

Requests (``DelegateRequest.parse``):

- ``cpu``: the runtime's CPU path with XNNPACK (``OpResolverType.BUILTIN``, the runtime applies
  XNNPACK in ``allocate_tensors()``), ``threads`` = big cores by default.
- ``edgetpu`` / ``edgetpu:usb`` / ``edgetpu:usb:1`` / ``edgetpu:pci:0``: libedgetpu through
  ``load_delegate(library, {"device": ...})`` exactly like pycoral. Failing -> DelegateError.
- ``external:/path/lib.so[?key=value&...]``: any TFLite external delegate plugin, options passed
  through. Failing -> DelegateError.
- ``auto``: the Edge TPU when the hardware lists one AND the model is Edge TPU-compiled, else the
  CPU. Every fallback is logged with what to do and returned in ``LoadedModel.fallback``.

The Edge TPU and external delegates share one code path (``_load_with_delegate``); the tests
prove it with a compiled stub plugin (tests/delegate_stub) standing in for libedgetpu.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from agent.errors import ConfigError, DelegateError, EdgeloopError, ModelFileError
from agent.runtime import edgetpu, nodes
from agent.runtime.base import Backend, classify_model_error
from agent.runtime.edgetpu import find_edgetpu_library
from agent.runtime.native_stderr import capture_stderr
from agent.runtime.registry import get_backend

if TYPE_CHECKING:
    from agent.board.hardware import HardwareInfo
    from agent.runtime.modelinfo import ModelInfo

log = logging.getLogger(__name__)

KINDS = ("auto", "cpu", "edgetpu", "external")
ENV_HW_ROOT = "EDGELOOP_HW_ROOT"

__all__ = ["DelegateRequest", "LoadedModel", "find_edgetpu_library", "load_model"]


@dataclass(frozen=True)
class DelegateRequest:
    kind: str
    device: str | None = None
    library: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, options: Mapping[str, str] | None = None) -> DelegateRequest:
        """``auto``, ``cpu``, ``edgetpu[:usb|:usb:N|:pci|:pci:N|::N]``, ``external:/p.so[?k=v]``."""
        opts = {str(k): str(v) for k, v in (options or {}).items()}
        text = text.strip()
        kind, _, rest = text.partition(":")
        kind = kind.lower()
        if kind in ("auto", "cpu") and not rest:
            return cls(kind, options=opts)
        if kind == "edgetpu":
            return cls("edgetpu", device=edgetpu.validate_device(rest or None), options=opts)
        if kind == "external" and rest:
            library, _, query = rest.partition("?")
            opts = {**dict(parse_qsl(query, keep_blank_values=True)), **opts}
            return cls("external", device=opts.get("device"), library=library, options=opts)
        raise ConfigError(
            f"invalid delegate request {text!r}",
            hint="use auto, cpu, edgetpu, edgetpu:usb, edgetpu:usb:N, edgetpu:pci:N "
            "or external:/path/to/delegate.so",
        )

    def __str__(self) -> str:
        if self.kind == "edgetpu" and self.device:
            return f"edgetpu:{self.device}"
        if self.kind == "external":
            return f"external:{self.library}"
        return self.kind


@dataclass
class LoadedModel:
    interpreter: Any
    runtime: str
    runtime_version: str
    delegate: str
    device: str | None
    threads: int
    fallback: str | None
    nodes_total: int | None
    nodes_delegated: int | None
    init_ms: float
    library: str | None = None
    native_log: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Everything but the interpreter (and the raw native log), JSON-safe."""
        return {
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "delegate": self.delegate,
            "device": self.device,
            "threads": self.threads,
            "fallback": self.fallback,
            "nodes_total": self.nodes_total,
            "nodes_delegated": self.nodes_delegated,
            "init_ms": round(self.init_ms, 3),
            "library": self.library,
        }


@dataclass(frozen=True)
class _Plan:
    kind: str  # "cpu" | "edgetpu" | "external"
    device: str | None = None
    library: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


def load_model(
    model: str | Path,
    request: DelegateRequest | str = "auto",
    *,
    threads: int | None = None,
    hardware: HardwareInfo | None = None,
    backend: Backend | None = None,
    info: ModelInfo | None = None,
) -> LoadedModel:
    """Create the interpreter on the requested delegate and ``allocate_tensors()``.

    Raises ModelFileError (missing/unloadable file), IncompatibleModelError (valid model the
    runtime cannot run, e.g. an unresolved custom op), DelegateError (explicit edgetpu/external
    that cannot be loaded or applied), RuntimeUnavailableError (no runtime), ConfigError.
    """
    req = request if isinstance(request, DelegateRequest) else DelegateRequest.parse(request)
    if req.kind not in KINDS:
        raise ConfigError(f"unknown delegate kind {req.kind!r}", hint=f"use one of {KINDS}")
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}", hint="check the path")
    backend = backend or get_backend()
    if hardware is None and (req.kind == "auto" or threads is None):
        hardware = _detect_hardware()
    n_threads = _default_threads(threads, hardware)

    if req.kind == "cpu":
        return _load_cpu(backend, path, n_threads, fallback=None)
    if req.kind in ("edgetpu", "external"):
        return _load_with_delegate(backend, path, n_threads, _explicit_plan(req))
    return _load_auto(backend, path, n_threads, req, hardware=hardware, info=info)


def _load_auto(
    backend: Backend,
    path: Path,
    threads: int,
    req: DelegateRequest,
    *,
    hardware: HardwareInfo | None,
    info: ModelInfo | None,
) -> LoadedModel:
    if info is None:
        from agent.runtime.modelfile import inspect

        info = inspect(path)
    tpus = [a for a in (hardware.accelerators if hardware else []) if a.kind == "edgetpu"]
    if not info.is_edgetpu:
        reason = None
        if tpus:
            reason = (
                f"model is not Edge TPU-compiled, so the Edge TPU at {tpus[0].device} stays idle: "
                "compile a full-int8 variant with edgetpu_compiler to use it"
            )
        return _load_cpu(backend, path, threads, fallback=_logged(reason))
    if not tpus:
        reason = (
            "model is Edge TPU-compiled but no Edge TPU was found: connect the Coral USB "
            "Accelerator (lsusb: 1a6e:089a or 18d1:9302) or the PCIe/M.2 card (/dev/apex_0), "
            "or deploy the CPU variant of this model"
        )
        return _load_cpu(backend, path, threads, fallback=_logged(reason))
    device = tpus[0].device
    library = edgetpu.resolve_library(req.library)
    if library is None:
        reason = f"Edge TPU {device} present but libedgetpu was not found: {edgetpu.INSTALL_HINT}"
        return _load_cpu(backend, path, threads, fallback=_logged(reason))
    plan = _Plan("edgetpu", device, library, edgetpu.delegate_options(device, dict(req.options)))
    try:
        return _load_with_delegate(backend, path, threads, plan)
    except DelegateError as exc:
        reason = f"Edge TPU delegate unusable, running on CPU: {exc}"
        return _load_cpu(backend, path, threads, fallback=_logged(reason))


def _explicit_plan(req: DelegateRequest) -> _Plan:
    if req.kind == "external":
        if not req.library:
            raise ConfigError("external delegate needs a library path", hint="external:/p.so")
        return _Plan("external", req.options.get("device"), req.library, dict(req.options))
    device = edgetpu.validate_device(req.device)
    library = edgetpu.resolve_library(req.library)
    if library is None:
        raise DelegateError(
            f"Edge TPU delegate requested (device {device or 'first found'}) but libedgetpu "
            f"({', '.join(edgetpu.library_names())}) was not found in the usual library "
            "directories or by the dynamic loader",
            hint=edgetpu.INSTALL_HINT,
        )
    return _Plan("edgetpu", device, library, edgetpu.delegate_options(device, dict(req.options)))


def _load_cpu(backend: Backend, path: Path, threads: int, fallback: str | None) -> LoadedModel:
    start = time.perf_counter()
    with capture_stderr() as native:
        try:
            interp = backend.interpreter(str(path), num_threads=threads)
            before = nodes.snapshot(interp)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            error: BaseException | None = exc
        else:
            error = None
    _log_native(native.text, path)
    if error is not None:
        raise classify_model_error(error, path, _rt(backend), extra_hint=fallback) from error
    init_ms = (time.perf_counter() - start) * 1000.0
    total, delegated = nodes.count(before, nodes.snapshot(interp), explicit=False)
    return LoadedModel(
        interp,
        backend.name,
        backend.version,
        "cpu",
        None,
        threads,
        fallback,
        total,
        delegated,
        init_ms,
        native_log=native.text,
    )


def _load_with_delegate(backend: Backend, path: Path, threads: int, plan: _Plan) -> LoadedModel:
    what = "Edge TPU delegate" if plan.kind == "edgetpu" else "external delegate"
    where = f"library {plan.library}, device {plan.device or 'default'}, runtime {_rt(backend)}"
    assert plan.library is not None
    start = time.perf_counter()
    stage = "load"
    error: BaseException | None = None
    with capture_stderr() as native:
        try:
            delegate = backend.load_delegate(plan.library, plan.options)
            stage = "apply"
            interp = backend.interpreter(str(path), num_threads=threads, delegates=[delegate])
            before = nodes.snapshot(interp)
            stage = "allocate"
            interp.allocate_tensors()
        except (DelegateError, ValueError, RuntimeError) as exc:
            error = exc
    _log_native(native.text, path)
    if error is not None:
        if stage != "load":
            model_error = classify_model_error(error, path, _rt(backend))
            if isinstance(model_error, ModelFileError):  # a broken file, whatever the delegate
                raise model_error from error
        detail = error.message if isinstance(error, EdgeloopError) else " ".join(str(error).split())
        native_text = f"; native stderr: {native.text}" if native.text else ""
        raise DelegateError(
            f"{what} failed at {stage} ({where}): {detail}{native_text}",
            hint=edgetpu.INSTALL_HINT if plan.kind == "edgetpu" else "check the plugin and options",
        ) from error
    init_ms = (time.perf_counter() - start) * 1000.0
    total, delegated = nodes.count(before, nodes.snapshot(interp), explicit=True)
    log.info("%s loaded (%s): %s of %s nodes delegated", what, where, delegated, total)
    return LoadedModel(
        interp,
        backend.name,
        backend.version,
        plan.kind,
        plan.device,
        threads,
        None,
        total,
        delegated,
        init_ms,
        library=plan.library,
        native_log=native.text,
    )


def _detect_hardware() -> HardwareInfo | None:
    root = os.environ.get(ENV_HW_ROOT, "/")
    try:
        from agent.board.hardware import detect

        return detect(root)
    except (EdgeloopError, OSError, ImportError) as exc:
        log.warning("hardware probe of %s failed, assuming CPU only: %s", root, exc)
        return None


def _default_threads(threads: int | None, hardware: HardwareInfo | None) -> int:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}", hint="omit it for big cores")
        return threads
    if hardware is not None and hardware.cpu.big_cores > 0:
        return int(hardware.cpu.big_cores)
    return os.cpu_count() or 1


def _logged(reason: str | None) -> str | None:
    if reason:
        log.warning("delegate fallback to cpu: %s", reason)
    return reason


def _log_native(text: str, path: Path) -> None:
    if text:
        log.debug("native stderr while loading %s: %s", path, text)


def _rt(backend: Backend) -> str:
    return f"{backend.name} {backend.version}"
