"""The TensorFlow backend: ``tf.lite.TFLiteConverter`` from a Keras file or a SavedModel.

- fp32: no options.
- fp16: ``optimizations=[DEFAULT]``, ``target_spec.supported_types=[tf.float16]``.
- dynamic-int8: ``optimizations=[DEFAULT]``.
- int8, edgetpu: ``optimizations=[DEFAULT]``, representative dataset, ``TFLITE_BUILTINS_INT8``,
  ``inference_input_type``/``inference_output_type`` = the recipe's ``io`` (int8 or uint8;
  float32 keeps float I/O).
- int16x8: ``optimizations=[DEFAULT]``, representative dataset,
  ``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``.

Weights are per-channel for convolutions (the converter's default). ``selective`` is not done
here: the pipeline converts to float with this backend and hands the float .tflite to
ai-edge-quantizer (backend reported as ``tf+aiq``).

The representative dataset yields one dict per calibration sample keyed by the float model's
signature input names, so several inputs are matched by name, never by position.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import EdgeloopError
from deploy.convert.data import Dataset
from deploy.convert.recipes import Recipe

log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def available() -> str | None:
    """None when TensorFlow imports, else the reason it does not."""
    try:
        import tensorflow  # noqa: F401
    except Exception as exc:
        return f"TensorFlow is not usable: {type(exc).__name__}: {exc}"
    return None


def version() -> str | None:
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def is_tf_source(source: Path) -> bool:
    return source.suffix in KERAS_SUFFIXES or (source / "saved_model.pb").is_file()


def _converter(source: Path) -> Any:
    import tensorflow as tf

    if source.is_dir():
        return tf.lite.TFLiteConverter.from_saved_model(str(source))
    model = tf.keras.models.load_model(str(source), compile=False)
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _representative(data: Dataset) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    def gen() -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(data)):
            yield {
                name: arr[i : i + 1].astype(np.float32)
                for name, arr in zip(data.names, data.arrays, strict=True)
            }

    return gen


def convert(
    source: Path,
    recipe: Recipe,
    calibration: Dataset | None,
    *,
    say: Callable[[str], None] = log.info,
) -> bytes:
    """Convert ``source`` as ``recipe``; raises EdgeloopError(code="conversion")."""
    import tensorflow as tf

    conv = _converter(source)
    kind = recipe.kind
    if kind == "selective":
        raise EdgeloopError(
            f"recipe {recipe.name}: the TensorFlow backend makes selective variants through "
            "ai-edge-quantizer",
            hint="use backend aiq or auto",
            code="conversion",
        )
    if kind != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if kind in ("int8", "edgetpu", "int16x8"):
        if calibration is None or len(calibration) == 0:
            raise EdgeloopError(
                f"recipe {recipe.name} needs calibration data",
                hint="pass --calibration DATA (npz, .npy folder or image folder)",
                code="conversion",
            )
        say(f"calibrating on {len(calibration)} samples (representative dataset)")
        conv.representative_dataset = _representative(calibration)
    if kind in ("int8", "edgetpu"):
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if recipe.io != "float32":
            conv.inference_input_type = getattr(tf, recipe.io)
            conv.inference_output_type = getattr(tf, recipe.io)
    if kind == "int16x8":
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    return bytes(conv.convert())


_OP_PATTERNS = (
    r"not yet supported for op: '?([A-Za-z0-9_]+)'?",
    r"'tfl?\.([A-Za-z0-9_]+)' op",
    r"\bop(?:erator)?[:\s]+'?([A-Z][A-Z0-9_]{2,})'?",
    r"\btf\.([A-Z][A-Za-z0-9_]+)\b",
)


def error_operator(exc: BaseException) -> str | None:
    """The operator a converter error names, when it names one (``SIN``, ``Erf``...)."""
    text = str(exc)
    for pattern in _OP_PATTERNS:
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None
