"""``tensorflow.lite`` from a full TensorFlow install (development hosts; heavy to import)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

from agent.runtime.base import Backend


class TensorFlowBackend(Backend):
    name = "tensorflow"
    module_name = "tensorflow"
    distributions = ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64", "tf-nightly")

    def _import(self) -> Any:
        tf = importlib.import_module("tensorflow")
        return SimpleNamespace(
            Interpreter=tf.lite.Interpreter,
            load_delegate=tf.lite.experimental.load_delegate,
            OpResolverType=tf.lite.experimental.OpResolverType,
        )
