"""Make ``rfft_audio_fp32.tflite``: a float audio front-end (STFT -> |.| -> dense), by TensorFlow.

The shape of a real float audio model: the STFT becomes RFFT2D, so the model carries complex64
tensors (and int32 shape tensors) among its float32 ones, and nothing in it is quantized. Used
to test that the classifier calls it float (``agent.runtime.modelfile.classify``).

    /work/main/.venv/bin/python -m tests.models.make_rfft      # writes tests/models/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "extra" / "rfft_audio_fp32.tflite"
SAMPLES = 1024  # waveform length
FRAME, STEP, BINS, CLASSES = 256, 128, 129, 4


def make() -> bytes:
    import tensorflow as tf

    frames = 1 + (SAMPLES - FRAME) // STEP
    rng = np.random.RandomState(0)
    w = (rng.randn(frames * BINS, CLASSES) / np.sqrt(frames * BINS)).astype("float32")

    class Front(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            self.w = tf.Variable(w)

        @tf.function(input_signature=[tf.TensorSpec([1, SAMPLES], tf.float32, name="audio")])  # type: ignore[untyped-decorator]
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            spec = tf.signal.stft(x, frame_length=FRAME, frame_step=STEP, fft_length=FRAME)
            mag = tf.math.log(tf.abs(spec) + 1e-6)
            flat = tf.reshape(mag, [1, frames * BINS])
            return {"scores": tf.nn.softmax(tf.matmul(flat, self.w))}

    module = Front()
    fn = module.__call__.get_concrete_function()
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn], module).convert())


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or [str(OUT)])[0])
    out.write_bytes(make())
    print(f"{out}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
