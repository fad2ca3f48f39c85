"""Quantization-aware training (the ``qat`` recipe): TFMOT on a tf-keras model, full int8 out.

TensorFlow Model Optimization (``tensorflow_model_optimization``) works on tf-keras (Keras 2)
models only:

- a tf-keras source (``.h5`` / ``.hdf5``, a SavedModel directory) is loaded as it is
  (``tf_keras.models.load_model(compile=False)``);
- a Keras 3 ``.keras`` source is **rebuilt** under tf-keras layer by layer (same class names in
  ``tf_keras.layers``, the config keys tf-keras knows, the weights copied), for Sequential and
  Functional models of built-in layers; anything else is a clear error naming the way out.

Then ``quantize_model`` inserts fake-quantization, the model is fine-tuned on the labelled
training data (bounded: ``epochs`` and ``max_seconds`` from the recipe's options, progress per
epoch), and ``TFLiteConverter`` makes a full-integer model (int8 kernels, the recipe's I/O type)
with the calibration data (or the training data) as representative dataset.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import EdgeloopError
from deploy.convert.data import Dataset
from deploy.convert.recipes import Recipe

log = logging.getLogger(__name__)

WAY_OUT = (
    "save the model with tf-keras (tf_keras.Model.save('m.h5') or a SavedModel) and give that "
    "as the source, or use the selective recipe (no training) on it"
)
_DEFAULTS = {"epochs": 3, "max_seconds": 120.0, "learning_rate": 1e-4, "batch_size": 32}


def version() -> str | None:
    try:
        return importlib.metadata.version("tensorflow-model-optimization")
    except importlib.metadata.PackageNotFoundError:
        return None


def tfmot() -> Any:
    """Import TFMOT without switching the process's ``tf.keras`` to tf-keras.

    TFMOT's compat module sets ``TF_USE_LEGACY_KERAS=1`` at import; had ``tf.keras`` not been
    resolved yet, every later ``tf.keras`` in the process (the TensorFlow backend loading a
    Keras 3 source) would be tf-keras. ``tf.keras`` is resolved first and the variable restored.
    """
    import tensorflow as tf

    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    _ = tf.keras.version  # resolve tf.keras (Keras 3) before TFMOT sets the variable
    try:
        import tensorflow_model_optimization as module
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved
    return module


def available() -> str | None:
    """None when tf-keras and TFMOT import, else the reason they do not."""
    try:
        import tf_keras  # noqa: F401

        tfmot()
    except Exception as exc:
        return (
            f"quantization-aware training needs tf-keras and tensorflow-model-optimization: "
            f"{type(exc).__name__}: {exc}"
        )
    return None


def _error(message: str, hint: str = WAY_OUT) -> EdgeloopError:
    return EdgeloopError(message, hint=hint, code="conversion")


def _plain(value: Any) -> Any:
    """A Keras 3 config value in tf-keras terms: dtype policies become their name."""
    if isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return value.get("config", {}).get("name", "float32")
    return value


def _layer(tfk: Any, layer: Any) -> Any:
    """The tf-keras twin of one Keras 3 layer (weights not yet copied)."""
    cls = getattr(tfk.layers, type(layer).__name__, None)
    if cls is None:
        raise _error(f"layer {layer.name!r} ({type(layer).__name__}) has no tf-keras equivalent")
    config = {k: _plain(v) for k, v in layer.get_config().items()}
    for key in [k for k, v in config.items() if isinstance(v, dict) and "module" in v]:
        config.pop(key)  # initializers/regularizers: the weights are copied, defaults will do
    if type(layer).__name__ == "InputLayer":
        config = {
            "batch_input_shape": config.get("batch_shape"),
            "name": layer.name,
            "dtype": config.get("dtype", "float32"),
        }
    for _ in range(len(config) + 1):
        try:
            return cls(**config)
        except TypeError as exc:  # a Keras 3 only key (quantization_config, lora_rank ...)
            bad = [k for k in config if repr(k) in str(exc) or f"'{k}'" in str(exc)]
            if not bad:
                raise _error(f"layer {layer.name!r}: tf-keras refuses its config: {exc}") from exc
            for k in bad:
                config.pop(k)
    raise _error(f"layer {layer.name!r}: tf-keras refuses its config")  # pragma: no cover


def _history(arg: Any) -> list[tuple[str, int, int]]:
    """Every (layer, node, tensor) a Keras 3 serialized call argument refers to."""
    if isinstance(arg, dict):
        if arg.get("class_name") == "__keras_tensor__":
            name, node, index = arg["config"]["keras_history"]
            return [(str(name), int(node), int(index))]
        return [h for v in arg.values() for h in _history(v)]
    if isinstance(arg, list | tuple):
        return [h for v in arg for h in _history(v)]
    return []


def _names(layers: Any) -> list[str]:
    """Layer names of a Functional config's input_layers/output_layers (one or a list)."""
    if layers and isinstance(layers[0], list):
        return [str(entry[0]) for entry in layers]
    return [str(layers[0])]


def rebuild_keras3(path: Path) -> Any:
    """Load a Keras 3 ``.keras`` file and rebuild it as a tf-keras Functional model."""
    import keras
    import tf_keras as tfk

    k3 = keras.models.load_model(str(path), compile=False)
    spec = json.loads(k3.to_json())
    if spec.get("class_name") not in ("Functional", "Sequential", "Model"):
        raise _error(f"{path}: a {spec.get('class_name')} model cannot be rebuilt (subclassed)")
    if spec["class_name"] == "Sequential":
        layers = [_layer(tfk, lay) for lay in k3.layers]
        twin = tfk.Sequential([tfk.Input(batch_shape=k3.inputs[0].shape), *layers])
    else:
        tensors: dict[str, Any] = {}
        for entry in spec["config"]["layers"]:
            layer = k3.get_layer(entry["name"])
            if type(layer).__name__ == "InputLayer":
                tensors[layer.name] = tfk.Input(
                    batch_shape=tuple(layer.batch_shape), name=layer.name, dtype=layer.dtype
                )
                continue
            twin_layer = _layer(tfk, layer)
            for node in entry["inbound_nodes"]:
                refs = _history(node.get("args", []))
                args = [tensors[name] for name, _, _ in refs]
                nested = node.get("args") and isinstance(node["args"][0], list)
                tensors[layer.name] = twin_layer(args if nested or len(args) > 1 else args[0])
        ins = [tensors[name] for name in _names(spec["config"]["input_layers"])]
        outs = [tensors[name] for name in _names(spec["config"]["output_layers"])]
        twin = tfk.Model(ins, outs if len(outs) > 1 else outs[0], name=k3.name)
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(k3.get_layer(layer.name).get_weights())
    return twin


def load_tf_keras(source: Path) -> Any:
    """The source as a tf-keras model: loaded as it is, or rebuilt from Keras 3."""
    import tf_keras as tfk

    if source.suffix == ".keras":
        try:
            return rebuild_keras3(source)
        except EdgeloopError:
            raise
        except Exception as exc:
            raise _error(
                f"{source}: cannot rebuild the Keras 3 model under tf-keras: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    try:
        return tfk.models.load_model(str(source), compile=False)
    except Exception as exc:
        raise _error(f"{source}: tf-keras cannot load it: {type(exc).__name__}: {exc}") from exc


class _Bounded:
    """A tf-keras callback (made lazily): progress per epoch, stop after ``max_seconds``."""

    @staticmethod
    def make(tfk: Any, max_seconds: float, say: Callable[[str], None]) -> Any:
        class Callback(tfk.callbacks.Callback):  # type: ignore[misc]
            def on_train_begin(self, logs: Any = None) -> None:
                self.t0 = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                say(
                    f"QAT epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}, "
                    f"accuracy {logs.get('accuracy', float('nan')):.4f}, "
                    f"{time.monotonic() - self.t0:.1f} s"
                )
                if time.monotonic() - self.t0 > max_seconds:
                    say(f"QAT stopped: time bound {max_seconds:g} s reached")
                    self.model.stop_training = True

        return Callback()


def train_qat(
    model: Any, train: Dataset, options: dict[str, Any], say: Callable[[str], None]
) -> Any:
    """Fake-quantize ``model`` and fine-tune it on the labelled ``train`` data."""
    import tf_keras as tfk

    if train.labels is None:
        raise _error(
            f"{train.source}: the QAT training data has no labels",
            "add a 'labels' array (class ids or one-hot) to the --train data",
        )
    opts = {**_DEFAULTS, **options}
    try:
        q = tfmot().quantization.keras.quantize_model(model)
    except Exception as exc:
        raise _error(
            f"TFMOT cannot quantize this model: {type(exc).__name__}: {exc}",
            "use the selective recipe, or replace the unsupported layers",
        ) from exc
    one_hot = train.labels.ndim == 2
    probs = str(getattr(model.layers[-1], "activation", "")).find("softmax") >= 0
    loss = (
        tfk.losses.CategoricalCrossentropy if one_hot else tfk.losses.SparseCategoricalCrossentropy
    )(from_logits=not probs)
    q.compile(
        optimizer=tfk.optimizers.Adam(float(opts["learning_rate"])), loss=loss, metrics=["accuracy"]
    )
    x = train.arrays[0] if len(train.arrays) == 1 else list(train.arrays)
    say(
        f"QAT: {len(train)} labelled samples, at most {opts['epochs']} epochs / "
        f"{opts['max_seconds']:g} s"
    )
    q.fit(
        x,
        train.labels,
        epochs=int(opts["epochs"]),
        batch_size=int(opts["batch_size"]),
        verbose=0,
        callbacks=[_Bounded.make(tfk, float(opts["max_seconds"]), say)],
    )
    return q


def convert(
    source: Path,
    recipe: Recipe,
    calibration: Dataset | None,
    train: Dataset | None,
    *,
    say: Callable[[str], None] = log.info,
) -> bytes:
    """QAT on ``train``, then a full-integer .tflite; raises EdgeloopError."""
    reason = available()
    if reason is not None:
        hint = "install the 'qat' extra with --no-deps (docs/convert.md)"
        raise EdgeloopError(reason, hint=hint, code="unavailable")
    if train is None or len(train) == 0:
        raise EdgeloopError(
            f"recipe {recipe.name} needs labelled training data",
            hint="pass --train DATA (same formats as --calibration, with labels)",
            code="unavailable",
        )
    import tensorflow as tf

    from deploy.convert.tf_backend import _representative

    seeded()
    model = load_tf_keras(source)
    q = train_qat(model, train, dict(recipe.options), say)
    conv = tf.lite.TFLiteConverter.from_keras_model(q)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative((calibration or train).head(200))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if recipe.io != "float32":
        conv.inference_input_type = getattr(tf, recipe.io)
        conv.inference_output_type = getattr(tf, recipe.io)
    return bytes(conv.convert())


def seeded(seed: int = 0) -> None:
    """Deterministic QAT (the cache keys on inputs, so a rerun must make the same model)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    np.random.seed(seed)
