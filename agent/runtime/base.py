"""The one interface every TFLite runtime backend implements.

A backend wraps one Python package that provides ``Interpreter``, ``load_delegate`` and
``OpResolverType`` (``ai_edge_litert.interpreter``, ``tflite_runtime.interpreter`` or
``tensorflow.lite``). The package is imported lazily, on first use, so that a missing or broken
runtime is reported (``RuntimeInfo.available = False``) instead of crashing the agent at import.

Errors from the runtimes are turned into the edgeloop family here, in one place:

- ``load_delegate`` raises ``ValueError`` when the plugin's create function returns NULL (the
  message is what the plugin passed to ``report_error``), ``OSError`` when ``ctypes`` cannot open
  the shared library, ``AttributeError`` when the library lacks the plugin symbols. All three
  become ``DelegateError`` naming the library and options.
- ``Interpreter(...)`` raises ``ValueError`` for bytes that are not a usable flatbuffer
  (``UnicodeDecodeError``, a ``ValueError`` subclass, from tflite-runtime 2.14 on random bytes)
  and ``RuntimeError`` when a node fails to prepare (e.g. an unresolved custom op) -- those
  become ``ModelFileError`` / ``IncompatibleModelError`` via ``classify_model_error``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from agent.errors import (
    DelegateError,
    EdgeloopError,
    IncompatibleModelError,
    ModelFileError,
    RuntimeUnavailableError,
)
from agent.system.distversion import installed_version

# Runtime messages meaning "valid file, but this runtime cannot run it".
_INCOMPATIBLE = re.compile(
    r"didn't find op for builtin opcode|op builtin_code out of range|unresolved custom op"
    r"|failed to prepare|is not supported|not supported by this interpreter",
    re.IGNORECASE,
)


class Backend:
    """One TFLite runtime. Subclasses set the class attributes; nothing is imported until used."""

    name: ClassVar[str] = ""
    module_name: ClassVar[str] = ""
    distributions: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._module: Any = None
        self._import_error: RuntimeUnavailableError | None = None

    # --- discovery -----------------------------------------------------------------------
    def _import(self) -> Any:
        """Import the runtime: an object with Interpreter, load_delegate, OpResolverType."""
        return importlib.import_module(self.module_name)

    @property
    def module(self) -> Any:
        """The imported runtime module; raises RuntimeUnavailableError if it cannot be imported."""
        if self._import_error is not None:  # a failed import is not retried
            raise self._import_error
        if self._module is None:
            try:
                self._module = self._import()
            except Exception as exc:  # ImportError, or a broken install (numpy ABI, ...)
                self._import_error = RuntimeUnavailableError(
                    f"runtime {self.name} cannot be imported ({self.module_name}): "
                    f"{type(exc).__name__}: {exc}",
                    hint=f"install it (pip install {self.distributions[0]}) or choose another "
                    "runtime with EDGELOOP_RUNTIME",
                )
                raise self._import_error from exc
        return self._module

    @property
    def version(self) -> str:
        """Installed version from the distribution metadata ("unknown" if there is none)."""
        return self.installed_version() or "unknown"

    @classmethod
    def installed_version(cls) -> str | None:
        for dist in cls.distributions:
            version = installed_version(dist)
            if version is not None:
                return version
        return None

    # --- the interface -------------------------------------------------------------------
    def interpreter(
        self,
        model_path: str | None = None,
        model_content: bytes | None = None,
        *,
        num_threads: int | None = None,
        delegates: Sequence[Any] = (),
        xnnpack: bool = True,
    ) -> Any:
        """A new, not yet allocated ``Interpreter``.

        ``xnnpack=True`` selects ``OpResolverType.BUILTIN``: the optimized kernels plus the
        runtime's default delegate (XNNPACK), which the runtime applies in the first
        ``allocate_tensors()`` with ``num_threads`` threads. ``False`` selects
        ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (plain kernels). Runtime errors are raised as they
        come (``ValueError``/``RuntimeError``); ``load_model`` classifies them.
        """
        mod = self.module
        resolver = mod.OpResolverType
        kwargs: dict[str, Any] = {
            "experimental_op_resolver_type": (
                resolver.BUILTIN if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            ),
        }
        if num_threads is not None:
            kwargs["num_threads"] = int(num_threads)
        if delegates:
            kwargs["experimental_delegates"] = list(delegates)
        if model_path is not None:
            kwargs["model_path"] = os.fspath(model_path)
        if model_content is not None:
            kwargs["model_content"] = model_content
        return mod.Interpreter(**kwargs)

    def load_delegate(self, library: str, options: Mapping[str, str] | None = None) -> Any:
        """Load an external delegate plugin (Edge TPU or any other); raises DelegateError."""
        opts = {str(k): str(v) for k, v in (options or {}).items()}
        cause: Exception | None = None
        if os.sep in library and not os.path.exists(library):
            # Checked here: the runtimes' Delegate.__del__ trips over a failed dlopen.
            detail = "no such file"
        else:
            try:
                return self.module.load_delegate(library, opts)
            except ValueError as exc:  # the plugin's create function returned NULL
                cause, detail = exc, str(exc).strip()
            except OSError as exc:  # ctypes could not open the shared library
                cause, detail = exc, f"cannot open the shared library: {exc}"
            except AttributeError as exc:  # no tflite_plugin_create_delegate symbol
                cause = exc
                detail = f"not a TFLite delegate plugin (missing tflite_plugin_* symbols): {exc}"
        raise DelegateError(
            f"delegate {library} failed to load with options {opts or '{}'} "
            f"on {self.name} {self.version}: {detail}",
            hint="check the library path and that it matches this runtime",
        ) from cause

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version}>"


def classify_model_error(
    exc: BaseException, model: str | Path, runtime: str, extra_hint: str | None = None
) -> EdgeloopError:
    """A runtime's ValueError/RuntimeError on load -> ModelFileError/IncompatibleModelError."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if _INCOMPATIBLE.search(text):
        hint = (
            "check the model with 'edge-agent probe' / agent.runtime.compat;"
            " convert it for this runtime"
        )
        if "edgetpu-custom-op" in text:
            hint = (
                "the model is Edge TPU-compiled: run it with the edgetpu delegate on a board "
                "with a Coral, or deploy the CPU variant of the model"
            )
        return IncompatibleModelError(
            f"{runtime} cannot run {model}: {text}", hint=_join(extra_hint, hint)
        )
    return ModelFileError(
        f"{runtime} cannot load {model}: {text}",
        hint=_join(extra_hint, "the file is not a usable TFLite flatbuffer; re-export it"),
    )


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)
