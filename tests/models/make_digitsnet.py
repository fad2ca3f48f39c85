"""Make the demo's embedded default model: `digitsnet`, a wider CNN for scikit-learn's digits.

The small test CNN (`make_models.py`) runs in a few microseconds, too fast for latency targets to
mean anything. `digitsnet` upsamples the 8x8 digit to 32x32 and runs a small VGG-style stack, so
on a desktop core the float model takes ~1 ms and full int8 ~0.25 ms (the ratio the closed loop
has to discover), with real held-out accuracy (~98 %). Run from the repository root:

    python -m tests.models.make_digitsnet [--out deploy/data/digitsnet]

It writes `digitsnet.keras` (the source the converter starts from), `digitsnet_fp32.tflite`
(the float model the demo deploys first) and `digits_data.npz` (held-out `x`, `labels`, and a
calibration set `calib`; the same split as the test models).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.models.make_models import _seed_everything, convert, digits_split, fit_digits, make_cli

log = logging.getLogger(__name__)

OUT = Path(__file__).resolve().parents[2] / "deploy" / "data" / "digitsnet"
EPOCHS = 8


def build_digitsnet(batch_size: int | None = 1) -> Any:
    import tensorflow as tf

    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            tf.keras.Input(shape=(8, 8, 1), batch_size=batch_size, name="image"),
            layers.UpSampling2D(4, name="upsample"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Conv2D(128, 3, padding="same", activation="relu", name="conv4"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(128, activation="relu", name="dense"),
            layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digitsnet",
    )


def make(out: Path) -> dict[str, float]:
    _seed_everything()
    data = digits_split()
    model = build_digitsnet()
    acc = fit_digits(model, data, learning_rate=2e-3, epochs=EPOCHS, batch_size=32)
    out.mkdir(parents=True, exist_ok=True)
    clean = build_digitsnet()  # uncompiled copy: no optimizer state in the file
    clean.set_weights(model.get_weights())
    clean.save(out / "digitsnet.keras")
    (out / "digitsnet_fp32.tflite").write_bytes(convert(model, "fp32", data["calib"]))
    np.savez_compressed(
        out / "digits_data.npz", x=data["x"], labels=data["labels"], calib=data["calib"]
    )
    log.info("digitsnet held-out accuracy %.4f -> %s", acc, out)
    return {"keras_accuracy": float(acc)}


def main(argv: list[str] | None = None) -> int:
    return make_cli(make, __doc__ or "", argv, OUT)


if __name__ == "__main__":
    sys.exit(main())
