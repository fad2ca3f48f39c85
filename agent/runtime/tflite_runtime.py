"""``tflite-runtime`` (last release 2.14, numpy 1.x): what Raspberry Pi OS users often have."""

from __future__ import annotations

from agent.runtime.base import Backend


class TFLiteRuntimeBackend(Backend):
    name = "tflite-runtime"
    module_name = "tflite_runtime.interpreter"
    distributions = ("tflite-runtime", "tflite-runtime-nightly")
