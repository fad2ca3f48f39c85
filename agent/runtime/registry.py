"""Which TFLite runtimes are installed, and which one to use.

Nothing here imports a runtime at module import time: ``installed_runtimes()`` and
``get_backend()`` import lazily and turn every failure into data (``RuntimeInfo.error``) or a
``RuntimeUnavailableError`` that says what to install.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import RuntimeUnavailableError
from agent.runtime.base import Backend
from agent.runtime.litert import LiteRTBackend
from agent.runtime.tensorflow import TensorFlowBackend
from agent.runtime.tflite_runtime import TFLiteRuntimeBackend
from agent.wire.record import Record

log = logging.getLogger(__name__)

DEFAULT_PREFERENCE = ("ai-edge-litert", "tflite-runtime", "tensorflow")
ENV_RUNTIME = "EDGELOOP_RUNTIME"

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (LiteRTBackend, TFLiteRuntimeBackend, TensorFlowBackend)
}
ALIASES = {
    "litert": "ai-edge-litert",
    "ai_edge_litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
    "tflite": "tflite-runtime",
    "tf": "tensorflow",
    "tensorflow.lite": "tensorflow",
}

_instances: dict[str, Backend] = {}


@dataclass(frozen=True)
class RuntimeInfo(Record):
    name: str
    version: str | None
    module: str
    available: bool
    error: str | None


def canonical_name(name: str) -> str:
    """``"litert"`` -> ``"ai-edge-litert"``; raises RuntimeUnavailableError for unknown names."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BACKENDS:
        raise RuntimeUnavailableError(
            f"unknown runtime {name!r}",
            hint=f"use one of {', '.join(BACKENDS)} (e.g. {ENV_RUNTIME}=ai-edge-litert)",
            code="config",
        )
    return key


def _backend(name: str) -> Backend:
    if name not in _instances:
        _instances[name] = BACKENDS[name]()
    return _instances[name]


def _probe(name: str, check_import: bool = True) -> RuntimeInfo:
    backend = _backend(name)
    version = backend.installed_version()
    if not check_import:
        top = backend.module_name.split(".")[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError) as exc:
            return RuntimeInfo(name, version, backend.module_name, False, str(exc))
        error = None if found else f"module {top} is not installed"
        return RuntimeInfo(name, version, backend.module_name, found, error)
    try:
        backend.module  # noqa: B018 -- the import is the check
    except Exception as exc:
        return RuntimeInfo(name, version, backend.module_name, False, str(exc))
    return RuntimeInfo(name, version, backend.module_name, True, None)


def installed_runtimes(*, check_import: bool = True) -> list[RuntimeInfo]:
    """Every known runtime, importable or not (in DEFAULT_PREFERENCE order). Never raises.

    ``check_import=True`` imports each runtime (a broken install -- e.g. tflite-runtime 2.14
    under numpy 2 -- shows up as unavailable with the import error); ``False`` only looks for
    the package (fast: importing full TensorFlow takes seconds).
    """
    return [_probe(name, check_import) for name in DEFAULT_PREFERENCE]


def preference_from_env(preference: Sequence[str] | None = None) -> list[str]:
    """The preference order: env EDGELOOP_RUNTIME (comma list) overrides the argument."""
    env = os.environ.get(ENV_RUNTIME, "").strip()
    if env:
        names: Sequence[str] = [p for p in env.split(",") if p.strip()]
    elif preference:
        names = preference
    else:
        names = DEFAULT_PREFERENCE
    out: list[str] = []
    for name in names:
        canon = canonical_name(name)
        if canon not in out:
            out.append(canon)
    return out


def get_backend(preference: Sequence[str] | None = None) -> Backend:
    """The first importable runtime in the preference order; raises RuntimeUnavailableError."""
    order = preference_from_env(preference)
    problems: list[str] = []
    for name in order:
        info = _probe(name)
        if info.available:
            if problems:
                log.info(
                    "using runtime %s %s (skipped: %s)", name, info.version, "; ".join(problems)
                )
            return _backend(name)
        problems.append(f"{name}: {info.error}")
        log.debug("runtime %s unavailable: %s", name, info.error)
    raise RuntimeUnavailableError(
        "no usable TFLite runtime among " + ", ".join(order) + ": " + "; ".join(problems),
        hint="pip install ai-edge-litert (or tflite-runtime on Raspberry Pi OS), "
        f"or set {ENV_RUNTIME} to an installed one",
    )
