"""The sandboxed probe: first load, ``allocate_tensors()`` and one smoke inference in a child.

A malformed .tflite can SIGSEGV or abort the interpreter (LiteRT issue 10080), so the first
contact with an untrusted model happens in a separate process, never in the agent:

1. In the parent, without any interpreter: ``modelfile.inspect`` (not a TFLite flatbuffer ->
   code ``model_file``) and ``compat.ensure_compatible`` for the active runtime (-> code
   ``incompatible``). No child is started for these.
2. A child ``python -m agent.runtime.sandbox`` (code in ``agent.runtime.sandbox_child``;
``sys.executable``;
   spawned with fork+exec by ``subprocess`` without ``preexec_fn``, so a parent with threads
   is safe) limits its own
   address space (``RLIMIT_AS`` = ``memory_mb``) and disables core dumps as its very first
   statements, before importing numpy or a runtime, then loads the model through
   ``agent.runtime.load_model``, feeds ``agent.runtime.inputs.random_inputs`` and invokes once.
   It reports progress (``{"stage": ...}``) and the result as JSON lines on a private copy of
   its stdout; fd 1 is pointed at stderr so native chatter cannot corrupt the result.
3. The parent waits up to ``timeout_s`` (wall clock, including the child's Python start-up),
   kills the child's process group on timeout, and turns every ending into a ``ProbeResult``:
   the signal name if the child died by one, its exit code, the stage it reached, and the tail
   of its stderr. Outputs must be finite (float tensors) and match the declared shapes.

Why the limit is set by the child and not in ``preexec_fn``: ``preexec_fn`` runs Python code
between fork and exec, which the Python docs call unsafe when the parent has threads (the
agent has MQTT and sampler threads). The child applies it before any heavy import, so the
whole load is bounded all the same. The default ``memory_mb=2048`` leaves room for the
runtime's own address-space reservations (measured on x86-64: ai-edge-litert ~160 MB,
tflite-runtime ~130 MB, full TensorFlow ~1.2 GB of virtual memory just after import). Too low
a limit breaks the import itself (measured, 1 thread, digits model: 128 MB fails, 192 MB
works, with either runtime; plan >= 1.5 GB for the ``tensorflow`` runtime); that is reported
as ``load_failed``/``crashed`` at stage ``import`` with a "raise memory_mb" message, not as a
hang. The limit is on address space, not RSS: set it well above the model's RSS.

Test hook: ``EDGELOOP_SANDBOX_CRASH`` = ``segv`` | ``abort`` | ``hang`` | ``exit`` makes the
child misbehave right after a successful load (stage ``invoke``), and ``nan`` makes it report
a first output full of NaN (wrong shape too), so the signal, timeout and bad-output paths are
exercised deterministically. It is read only in the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.errors import EdgeloopError, IncompatibleModelError, ModelFileError
from agent.runtime.sandbox_child import DEFAULT_MEMORY_MB, RESULT_PREFIX
from agent.wire.record import Record

if TYPE_CHECKING:
    from agent.board.hardware import HardwareInfo
    from agent.runtime.modelinfo import ModelInfo

STDERR_TAIL_BYTES = 2000


@dataclass(frozen=True)
class ProbeResult(Record):
    """How the first load and smoke inference went (``ok`` only when ``code == "ok"``)."""

    ok: bool
    code: str  # ok | crashed | timeout | load_failed | bad_output | incompatible | model_file
    message: str
    signal: str | None = None
    exit_code: int | None = None
    init_ms: float | None = None
    invoke_ms: float | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    loaded: dict[str, Any] | None = None
    stage: str | None = None  # last stage the child reached: start|import|load|invoke|check
    stderr_tail: str = ""
    elapsed_ms: float | None = None


def _fail(code: str, message: str, **extra: Any) -> ProbeResult:
    return ProbeResult(ok=False, code=code, message=message, **extra)


def probe_model(
    model: str | Path,
    request: str = "auto",
    *,
    threads: int | None = None,
    timeout_s: float = 60.0,
    memory_mb: int = DEFAULT_MEMORY_MB,
    extra_env: Mapping[str, str] | None = None,
    precheck: bool = True,
) -> ProbeResult:
    """Load ``model`` and run one inference in a child process; never raises for a bad model.

    Raises RuntimeUnavailableError when no TFLite runtime is installed (not a model problem).
    ``memory_mb <= 0`` disables the address-space limit. ``precheck=False`` skips the
    in-parent inspection and compatibility check so the raw file reaches the interpreter
    (for tests and diagnostics only: the agent always prechecks).
    """
    from agent.runtime import compat, get_backend, modelfile

    path = Path(model)
    env = dict(os.environ)
    info: ModelInfo | None = None
    if precheck:
        try:
            info = modelfile.inspect(path)
        except ModelFileError as exc:
            return _fail("model_file", str(exc))
        backend = get_backend()
        try:
            delegate = compat_delegate(request, info)
            compat.ensure_compatible(info, backend.name, backend.version, delegate)
        except IncompatibleModelError as exc:
            return _fail("incompatible", str(exc))
        env["EDGELOOP_RUNTIME"] = backend.name
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "agent.runtime.sandbox", "--model", str(path.resolve())]
    argv += ["--request", request, "--memory-mb", str(memory_mb)]
    if threads is not None:
        argv += ["--threads", str(threads)]

    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        returncode, lines, timed_out = _run_child(argv, env, err, timeout_s)
        elapsed_ms = (time.monotonic() - started) * 1000.0
        err.seek(max(0, err.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
        tail = err.read().decode("utf-8", "replace").strip()
    stage, result = _parse_lines(lines)
    common: dict[str, Any] = {
        "stage": stage,
        "stderr_tail": tail,
        "elapsed_ms": elapsed_ms,
        "exit_code": returncode if returncode is not None and returncode >= 0 else None,
    }
    if timed_out:
        return _fail(
            "timeout",
            f"no result within {timeout_s:g} s (stage {stage}); the child was killed",
            signal="SIGKILL",
            **common,
        )
    cause = "the model is malformed or hits a runtime bug"
    if stage in ("start", "import") and memory_mb > 0:
        cause = (
            f"the runtime could not start under the {memory_mb} MB address-space limit "
            "(raise memory_mb)"
        )
    if returncode is not None and returncode < 0:
        name = _signal_name(-returncode)
        return _fail(
            "crashed",
            f"the probe child died with {name} during {stage}; {cause}",
            signal=name,
            **common,
        )
    if result is None:
        last = f" ({tail.splitlines()[-1]})" if tail else ""
        return _fail(
            "crashed",
            f"the probe child exited with code {returncode} during {stage} without a "
            f"result{last}; {cause}",
            **common,
        )
    return _judge(result, info, common)


def compat_delegate(request: str, info: ModelInfo, hardware: HardwareInfo | None = None) -> str:
    """The delegate ``compat.check`` should assume for ``request``.

    ``auto`` is resolved the way ``load_model`` resolves it: the Edge TPU only for an Edge
    TPU-compiled model on a board with one (hardware from ``EDGELOOP_HW_ROOT`` or ``/`` unless
    given), else the CPU. Raises ConfigError for a malformed request.
    """
    from agent.runtime import DelegateRequest

    req = DelegateRequest.parse(request)
    if req.kind != "auto":
        return str(req)
    if not info.is_edgetpu:
        return "cpu"
    if hardware is None:
        from agent.board.hardware import detect

        try:
            hardware = detect(os.environ.get("EDGELOOP_HW_ROOT", "/"))
        except (EdgeloopError, OSError):
            return "cpu"
    return "edgetpu" if any(a.kind == "edgetpu" for a in hardware.accelerators) else "cpu"


def _run_child(
    argv: Sequence[str], env: Mapping[str, str], err: IO[bytes], timeout_s: float
) -> tuple[int | None, list[str], bool]:
    """Run the child; returns (returncode, stdout lines, timed_out)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
        env=dict(env),
        start_new_session=True,  # its own process group: a timeout kill takes everything
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return proc.returncode, out.decode("utf-8", "replace").splitlines(), timed_out


def _parse_lines(lines: Sequence[str]) -> tuple[str, dict[str, Any] | None]:
    stage = "start"
    result: dict[str, Any] | None = None
    for line in lines:
        if not line.startswith(RESULT_PREFIX):
            continue
        try:
            msg = json.loads(line[len(RESULT_PREFIX) :])
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict):
            if isinstance(msg.get("stage"), str):
                stage = msg["stage"]
            if isinstance(msg.get("result"), dict):
                result = msg["result"]
    return stage, result


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _shape_matches(actual: Sequence[int], declared: Sequence[int]) -> bool:
    if len(actual) != len(declared):
        return False
    return all(d < 0 or a == d for a, d in zip(actual, declared, strict=True))


def _judge(result: dict[str, Any], info: ModelInfo | None, common: dict[str, Any]) -> ProbeResult:
    """Turn the child's own report into a ProbeResult, checking outputs against the file."""
    code = str(result.get("code", "load_failed"))
    outputs = [o for o in result.get("outputs", []) if isinstance(o, dict)]
    fields: dict[str, Any] = {
        **common,
        "init_ms": result.get("init_ms"),
        "invoke_ms": result.get("invoke_ms"),
        "outputs": outputs,
        "loaded": result.get("loaded"),
    }
    if code != "ok":
        message = str(result.get("message", "the model could not be loaded"))
        if info is not None and info.is_edgetpu:
            message += (
                " (the model is Edge TPU-compiled: it needs an Edge TPU and --delegate edgetpu)"
            )
        elif info is not None and info.custom_ops:
            message += f" (the model uses custom operators: {', '.join(info.custom_ops)})"
        return _fail(code, message, **fields)
    problems: list[str] = []
    if not outputs:
        problems.append("the model produced no outputs")
    declared = list(info.outputs) if info is not None else []
    if declared and len(declared) != len(outputs):
        problems.append(f"{len(outputs)} outputs, the file declares {len(declared)}")
    for i, out in enumerate(outputs):
        if not out.get("finite", False):
            problems.append(f"output {i} ({out.get('name')}) has NaN or Inf")
        if i < len(declared):
            sig = declared[i].shape_signature or declared[i].shape
            if not _shape_matches(out.get("shape", []), sig):
                problems.append(
                    f"output {i} ({out.get('name')}) has shape {out.get('shape')}, "
                    f"the file declares {list(sig)}"
                )
        if out.get("size") == 0:
            problems.append(f"output {i} ({out.get('name')}) is empty")
    if problems:
        return _fail("bad_output", "; ".join(problems), **fields)
    return ProbeResult(ok=True, code="ok", message="loaded and ran one inference", **fields)


if __name__ == "__main__":
    from agent.runtime.sandbox_child import main

    raise SystemExit(main())
