"""The child side of the sandboxed probe (``python -m agent.runtime.sandbox``); see
``agent.runtime.sandbox``.

Runs only in the child process. Its first act is to bound itself (address space, no core
dumps) before numpy or a runtime is imported; then it loads the model, invokes once, and
writes progress and the result as ``EDGELOOP-SANDBOX {json}`` lines on a private copy of its
stdout (fd 1 is pointed at stderr so native chatter cannot corrupt the channel).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.errors import EdgeloopError

CRASH_ENV = "EDGELOOP_SANDBOX_CRASH"
DEFAULT_MEMORY_MB = 2048
RESULT_PREFIX = "EDGELOOP-SANDBOX "


def _limit_self(memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _crash_hook() -> None:
    mode = os.environ.get(CRASH_ENV, "")
    if mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "abort":
        os.abort()
    elif mode == "exit":
        os._exit(3)
    elif mode == "hang":
        while True:
            time.sleep(3600)


def _describe_output(detail: Mapping[str, Any], array: Any) -> dict[str, Any]:
    import numpy as np

    arr = np.asarray(array)
    finite = bool(np.all(np.isfinite(arr))) if arr.dtype.kind in "fc" else True
    out: dict[str, Any] = {
        "name": str(detail.get("name", "")),
        "shape": [int(d) for d in arr.shape],
        "dtype": str(arr.dtype),
        "size": int(arr.size),
        "finite": finite,
    }
    if finite and arr.size and arr.dtype.kind in "fiub":
        out["min"] = float(arr.min())
        out["max"] = float(arr.max())
    return out


def _child(args: argparse.Namespace, emit: Any) -> dict[str, Any]:
    """Load, invoke once, describe the outputs. Runs only in the sandbox child."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    emit({"stage": "import"})
    try:
        import numpy as np

        from agent.runtime import get_backend, load_model
        from agent.runtime.inputs import random_inputs

        get_backend()
    except (EdgeloopError, ImportError, MemoryError) as exc:
        # The parent imported the same modules, so the address-space limit is the usual cause.
        return {
            "code": "load_failed",
            "message": f"the runtime failed to import in the sandbox under its {args.memory_mb} MB "
            f"address-space limit (raise memory_mb): {type(exc).__name__}: {exc}",
        }
    emit({"stage": "load"})
    try:
        loaded = load_model(args.model, args.request, threads=args.threads)
        interp = loaded.interpreter
        inputs = random_inputs(interp.get_input_details(), np.random.default_rng(0))
        for detail, value in zip(interp.get_input_details(), inputs, strict=True):
            interp.set_tensor(detail["index"], value)
    except EdgeloopError as exc:
        code = exc.code if exc.code in ("incompatible", "model_file") else "load_failed"
        return {"code": code, "message": str(exc)}
    except MemoryError:
        return {"code": "load_failed", "message": f"out of memory (limit {args.memory_mb} MB)"}
    except Exception as exc:
        return {"code": "load_failed", "message": f"{type(exc).__name__}: {exc}"}
    emit({"stage": "invoke"})
    _crash_hook()
    start = time.perf_counter_ns()
    try:
        interp.invoke()
    except Exception as exc:
        return {"code": "load_failed", "message": f"invoke failed: {type(exc).__name__}: {exc}"}
    invoke_ms = (time.perf_counter_ns() - start) / 1e6
    emit({"stage": "check"})
    outputs = [
        _describe_output(d, interp.get_tensor(d["index"])) for d in interp.get_output_details()
    ]
    if os.environ.get(CRASH_ENV) == "nan" and outputs:  # test hook: a model that emits NaN
        outputs[0] = _describe_output({"name": outputs[0]["name"]}, np.full(3, np.nan))
    return {
        "code": "ok",
        "init_ms": loaded.init_ms,
        "invoke_ms": invoke_ms,
        "outputs": outputs,
        "loaded": loaded.to_dict(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.runtime.sandbox")
    parser.add_argument("--model", required=True)
    parser.add_argument("--request", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB)
    args = parser.parse_args(argv)
    _limit_self(args.memory_mb)
    # Our result channel is a private copy of stdout; fd 1 now goes to stderr.
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def emit(msg: dict[str, Any]) -> None:
        channel.write(RESULT_PREFIX + json.dumps(msg, default=str) + "\n")
        channel.flush()

    emit({"result": _child(args, emit)})
    channel.close()
    return 0
