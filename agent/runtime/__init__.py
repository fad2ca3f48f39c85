"""TFLite runtimes behind one small interface, and delegate choice.

- ``registry``: ``RuntimeInfo``, ``installed_runtimes()``, ``get_backend()`` (preference order,
  env ``EDGELOOP_RUNTIME``); one backend per file (``litert``, ``tflite_runtime``,
  ``tensorflow``), all imported lazily.
- ``delegates``: ``DelegateRequest``, ``LoadedModel``, ``load_model()`` (cpu / edgetpu /
  external / auto with logged fallbacks); ``edgetpu``: libedgetpu names and device strings;
  ``nodes``: how many nodes a delegate took. See docs/runtimes.md.
"""

from __future__ import annotations

from agent.runtime.base import Backend
from agent.runtime.delegates import DelegateRequest, LoadedModel, load_model
from agent.runtime.edgetpu import find_edgetpu_library
from agent.runtime.registry import (
    DEFAULT_PREFERENCE,
    RuntimeInfo,
    get_backend,
    installed_runtimes,
)

__all__ = [
    "DEFAULT_PREFERENCE",
    "Backend",
    "DelegateRequest",
    "LoadedModel",
    "RuntimeInfo",
    "find_edgetpu_library",
    "get_backend",
    "installed_runtimes",
    "load_model",
]
