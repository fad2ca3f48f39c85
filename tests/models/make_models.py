"""Make the real models the tests and benchmarks use.

Run from the repository root:

    python -m tests.models.make_models [--out DIR] [--legacy] [--mobilenet DIR] [--check-with PY]

The default run trains a small CNN on scikit-learn's ``digits`` (fixed split and seeds) with
the installed TensorFlow and converts it to fp32, fp16, dynamic-range int8, full int8 and
int16x8 TFLite models, plus two synthetic custom-op models (see ``synthetic.py``). ``--legacy``
rebuilds the same network from the saved weights and converts it with the TensorFlow this is run
under (TF 2.14 makes models tflite-runtime 2.14 can load) into ``OUT/legacy``. Every run ends by
rewriting ``OUT/MANIFEST.json`` (see ``evaluate.py``). ``--mobilenet DIR`` only writes the
MobileNet v2 benchmark models into DIR.

The module imports TensorFlow lazily so that ``tests.modelzoo`` can import its names without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent
LEGACY_SUBDIR = "legacy"
SEED = 0
TEST_SIZE = 360
CALIB_SIZE = 100
EPOCHS = 40
DATA_FILE = "digits_data.npz"
WEIGHTS_FILE = "digits_weights.npz"
KERAS_FILE = "digits.keras"
DIGITS_VARIANTS = ("fp32", "fp16", "dynamic_int8", "int8", "int16x8")
MOBILENET_FILES = {"fp32": "mobilenet_v2_fp32.tflite", "int8": "mobilenet_v2_int8.tflite"}
MOBILENET_CALIB_SAMPLES = 8


def digits_split() -> dict[str, np.ndarray]:
    """Fixed split: 1437 train / 360 test, stratified, seed 0; x float32 (N, 8, 8, 1) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    rng = np.random.default_rng(SEED)
    calib = x_train[np.sort(rng.choice(len(x_train), CALIB_SIZE, replace=False))]
    return {"x_train": x_train, "y_train": y_train, "x": x_test, "labels": y_test, "calib": calib}


def _seed_everything() -> Any:
    import tensorflow as tf

    os.environ.setdefault("PYTHONHASHSEED", str(SEED))
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    return tf


def build_digits_cnn(batch_size: int | None = None) -> Any:
    """Conv2D -> DepthwiseConv2D -> 1x1 Conv2D -> MaxPool -> Dense -> Dense(softmax).

    Written against the API keras 2 (TF 2.14) and keras 3 (TF >= 2.16) share.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            tf.keras.Input(shape=(8, 8, 1), batch_size=batch_size, name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
            layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise"),
            layers.Conv2D(32, 1, activation="relu", name="pointwise"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(32, activation="relu", name="dense"),
            layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits_cnn",
    )


def fit_digits(
    model: Any, data: dict[str, np.ndarray], *, learning_rate: float, epochs: int, batch_size: int
) -> float:
    """Compile ``model`` (Adam, sparse cross-entropy), train it on the digits split and return
    its held-out accuracy (the digits models of make_digitsnet/make_digitswide too)."""
    import tensorflow as tf

    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        data["x_train"],
        data["y_train"],
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
    )
    _, acc = model.evaluate(data["x"], data["labels"], verbose=0)
    return float(acc)


def make_cli(
    make: Callable[[Path], object], doc: str, argv: list[str] | None, out: Path | None = None
) -> int:
    """The command line of a model maker: ``--out DIR`` (required unless ``out`` is its
    default), then ``make(DIR)``, whose result is printed."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--out", type=Path, default=out, required=out is None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(make(args.out))
    return 0


def train_digits(data: dict[str, np.ndarray]) -> Any:
    _seed_everything()
    model = build_digits_cnn()
    acc = fit_digits(model, data, learning_rate=3e-3, epochs=EPOCHS, batch_size=32)
    log.info("keras held-out accuracy %.4f", acc)
    return model


def save_weights(model: Any, path: Path) -> None:
    """Weights as plain arrays so keras 2 (TF 2.14) can rebuild the keras 3 model exactly."""
    arrays = {f"w{i:02d}": w for i, w in enumerate(model.get_weights())}
    np.savez_compressed(path, **arrays)


def load_weights(model: Any, path: Path) -> None:
    with np.load(path) as npz:
        model.set_weights([npz[k] for k in sorted(npz.files)])


def copy_model(model: Any, batch_size: int | None) -> Any:
    """An uncompiled copy of the digits CNN (no optimizer state) with a fixed or free batch."""
    copy = build_digits_cnn(batch_size)
    copy.set_weights(model.get_weights())
    return copy


def _converter(model: Any) -> Any:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model)


def _representative(samples: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for sample in samples:
            yield [sample[np.newaxis].astype(np.float32)]

    return gen


def convert(model: Any, variant: str, calib: np.ndarray, io_type: str = "int8") -> bytes:
    """One TFLite flatbuffer of ``model`` as ``variant`` (see DIGITS_VARIANTS)."""
    import tensorflow as tf

    conv = _converter(model)
    if variant == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic_int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = getattr(tf, io_type)
        conv.inference_output_type = getattr(tf, io_type)
    elif variant == "int16x8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _representative(calib)
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    elif variant != "fp32":
        raise ValueError(f"unknown variant {variant!r}; expected one of {DIGITS_VARIANTS}")
    return bytes(conv.convert())


def write_digits_set(model: Any, out: Path, calib: np.ndarray) -> dict[str, dict[str, str]]:
    """All digits variants and the synthetic custom-op models into ``out``; returns their info."""
    import tensorflow as tf

    from tests.models import synthetic

    out.mkdir(parents=True, exist_ok=True)
    converter = f"tensorflow {tf.__version__}"
    info: dict[str, dict[str, str]] = {}
    flat: dict[str, bytes] = {}
    single = copy_model(model, batch_size=1)  # input (1, 8, 8, 1), no SHAPE/PACK ops
    for variant in DIGITS_VARIANTS:
        flat[variant] = convert(single, variant, calib)
        name = f"digits_{variant}.tflite"
        (out / name).write_bytes(flat[variant])
        info[name] = {"variant": variant, "converter": converter}
        log.info("wrote %s (%d bytes)", out / name, len(flat[variant]))
    rewrites = {
        "digits_edgetpu.tflite": ("edgetpu", synthetic.fake_edgetpu(flat["int8"])),
        "digits_unknown_custom.tflite": ("unknown_custom", synthetic.unknown_custom(flat["int8"])),
    }
    for name, (variant, blob) in rewrites.items():
        (out / name).write_bytes(blob)
        info[name] = {"variant": variant, "converter": f"{converter} + synthetic rewrite"}
        log.info("wrote %s (%d bytes)", out / name, len(blob))
    return info


def make_main(out: Path) -> dict[str, dict[str, str]]:
    import tensorflow as tf

    data = digits_split()
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / DATA_FILE, x=data["x"], labels=data["labels"], calib=data["calib"])
    model = train_digits(data)
    copy_model(model, batch_size=None).save(out / KERAS_FILE)
    save_weights(model, out / WEIGHTS_FILE)
    info = write_digits_set(model, out, data["calib"])
    source = f"tensorflow {tf.__version__} (keras {_keras_version()})"
    for name in (DATA_FILE, WEIGHTS_FILE, KERAS_FILE):
        info[name] = {"variant": "source", "converter": source}
    return info


def make_legacy(out: Path) -> dict[str, dict[str, str]]:
    weights = out / WEIGHTS_FILE
    if not weights.exists():
        raise SystemExit(f"{weights} is missing: run the default (non --legacy) build first")
    with np.load(out / DATA_FILE) as npz:
        calib = npz["calib"]
    _seed_everything()
    model = build_digits_cnn()
    load_weights(model, weights)
    info = write_digits_set(model, out / LEGACY_SUBDIR, calib)
    return {f"{LEGACY_SUBDIR}/{k}": v for k, v in info.items()}


def make_mobilenet(out: Path) -> dict[str, Path]:
    """MobileNet v2 224x224x3, random weights (seed 0): fp32 and full int8 with uint8 I/O."""
    tf = _seed_everything()
    out.mkdir(parents=True, exist_ok=True)
    image = tf.keras.Input(shape=(224, 224, 3), batch_size=1, name="image")
    model = tf.keras.applications.MobileNetV2(input_tensor=image, weights=None)
    calib = (
        np.random.default_rng(SEED)
        .uniform(-1.0, 1.0, (MOBILENET_CALIB_SAMPLES, 224, 224, 3))
        .astype(np.float32)
    )
    paths: dict[str, Path] = {}
    for kind, variant, io in (("fp32", "fp32", "int8"), ("int8", "int8", "uint8")):
        blob = convert(model, variant, calib, io_type=io)
        path = out / MOBILENET_FILES[kind]
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        paths[kind] = path
        log.info("wrote %s (%d bytes)", path, len(blob))
    return paths


def _keras_version() -> str:
    import tensorflow as tf

    return str(getattr(tf.keras, "__version__", None) or tf.keras.version())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="default: tests/models")
    parser.add_argument("--legacy", action="store_true", help="convert into OUT/legacy")
    parser.add_argument("--mobilenet", type=Path, metavar="DIR", help="only make MobileNet v2")
    parser.add_argument(
        "--check-with",
        action="append",
        default=[],
        metavar="PYTHON",
        help="also evaluate every model with the runtime of this interpreter (repeatable)",
    )
    parser.add_argument("--manifest-only", action="store_true", help="only rewrite MANIFEST.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.mobilenet is not None:
        make_mobilenet(args.mobilenet)
        return 0
    from tests.models import evaluate

    info: dict[str, dict[str, str]] = {}
    if not args.manifest_only:
        info = make_legacy(args.out) if args.legacy else make_main(args.out)
    pythons = [sys.executable, *args.check_with]
    evaluate.update_manifest(args.out, info, pythons)
    return 0


if __name__ == "__main__":
    sys.exit(main())
