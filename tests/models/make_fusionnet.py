"""Make `fusionnet`: the quantization-sensitive task (issue 11), trained here on scikit-learn's
digits, no downloads. Run from the repository root:

    python -m tests.models.make_fusionnet [--out deploy/data/fusionnet]
    python -m tests.models.make_fusionnet --out tests/models/extra --width 32 --name fusionnet_small

The network fuses two kinds of feature in one tensor, as real models do (YOLO/SSD heads that
concatenate box coordinates in pixels with class scores, sensor-fusion and wide-and-deep models
that concatenate raw-unit features with learned embeddings):

- a learned **embedding**: Flatten -> 3 x Dense(256, relu) -> Dense(32, tanh), values in [-1, 1];
- an auxiliary **ink** output: a linear Dense(1) on the pixels giving the stroke area in pixels
  of the original 32x32 scan (the sum of the 64 counts of 0..16 on-pixels: about 150-600),
  initialised to that sum and kept there by a jointly trained regression loss;
- `Concatenate([embedding, ink])` -> Dense(10, softmax).

In float the classifier reads the embedding. Full-int8 PTQ quantizes the concatenation with one
scale per tensor (TFLite's int8 CONCATENATION needs a shared scale), set by the ink value's range
of hundreds, so the embedding's [-1, 1] falls into one or two steps: top-1 collapses. This is the
per-tensor activation range problem with an outlier channel, not noise. Dynamic-range int8 (float
activations), keeping the fusion in float (selective) or quantization-aware training (which
learns to shrink the ink value or widen the embedding) recover it.

It writes `fusionnet.keras` (Keras 3, the converter's source; classifier output only, batch 1)
`fusion_data.npz` (held-out `x`, `labels`, calibration `calib`) and `fusion_train.npz` (the
labelled training set, `x`/`labels`, for `--recipe qat --train`); the same split as the test
models.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.models.make_models import _seed_everything, digits_split

log = logging.getLogger(__name__)

OUT = Path(__file__).resolve().parents[2] / "deploy" / "data" / "fusionnet"
EPOCHS = 25
WIDTH = 256
INK_LOSS_WEIGHT = 1e-4  # ink is in hundreds of pixels: its MSE would swamp the class loss


def build_fusionnet(keras: Any, batch_size: int | None = 1, width: int = WIDTH) -> Any:
    """The training model (outputs: class probabilities, ink). ``keras``: Keras 3 or tf_keras;
    ``width``: of the three hidden dense layers (the tests use a narrower copy)."""
    layers = keras.layers
    image = keras.Input(shape=(8, 8, 1), batch_size=batch_size, name="image")
    h = layers.Flatten(name="flat")(image)
    for i in range(3):
        h = layers.Dense(width, activation="relu", name=f"fc{i}")(h)
    embedding = layers.Dense(32, activation="tanh", name="embed")(h)
    # stroke area in pixels: exactly sum(x) x 16 at the start, kept there by the ink loss
    area = keras.initializers.Constant(16.0)
    pixels = layers.Flatten(name="flat_ink")(image)
    ink = layers.Dense(1, kernel_initializer=area, name="ink")(pixels)
    fused = layers.Concatenate(name="fuse")([embedding, ink])
    probs = layers.Dense(10, activation="softmax", name="probs")(fused)
    return keras.Model(image, [probs, ink], name="fusionnet_train")


def train_fusionnet(
    keras: Any, data: dict[str, np.ndarray], width: int = WIDTH, epochs: int = EPOCHS
) -> Any:
    """Train on ``data["x_train"]`` (seeded by the caller); the classifier with batch 1."""
    train = build_fusionnet(keras, batch_size=None, width=width)
    train.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=["sparse_categorical_crossentropy", "mse"],
        loss_weights=[1.0, INK_LOSS_WEIGHT],
    )
    x, y = data["x_train"], data["y_train"]
    train.fit(x, [y, ink_pixels(x)], epochs=epochs, batch_size=32, verbose=0)
    deployed = build_fusionnet(keras, batch_size=1, width=width)  # no optimizer state
    deployed.set_weights(train.get_weights())
    return classifier(keras, deployed)


def classifier(keras: Any, train: Any) -> Any:
    """The deployed model: the class output only (the ink head still feeds the fusion)."""
    return keras.Model(train.input, train.outputs[0], name="fusionnet")


def ink_pixels(x: np.ndarray) -> np.ndarray:
    """Stroke area in pixels of the 32x32 scan: each 8x8 count (x * 16) is on-pixels of a 4x4."""
    area: np.ndarray = (x * 16.0).reshape(len(x), -1).sum(axis=1).astype(np.float32)
    return area


def write_data(out: Path, data: dict[str, np.ndarray]) -> None:
    np.savez_compressed(
        out / "fusion_data.npz", x=data["x"], labels=data["labels"], calib=data["calib"]
    )
    np.savez_compressed(out / "fusion_train.npz", x=data["x_train"], labels=data["y_train"])


def make(out: Path, width: int = WIDTH, name: str = "fusionnet") -> dict[str, float]:
    _seed_everything()
    import keras

    data = digits_split()
    model = train_fusionnet(keras, data, width)
    probs = model.predict(data["x"], batch_size=1, verbose=0)
    acc = float(np.mean(np.argmax(probs, axis=1) == data["labels"]))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / f"{name}.keras")
    if name == "fusionnet":
        write_data(out, data)
    log.info("fusionnet held-out accuracy %.4f -> %s", acc, out)
    return {"keras_accuracy": acc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--name", default="fusionnet", help="file stem (data only for fusionnet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(make(args.out, args.width, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
