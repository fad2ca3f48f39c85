"""The real models tests and benchmarks use (made by ``tests/models/make_models.py``).

``model(name)`` returns the committed digits model the active runtime can load: the TF 2.14
conversions in ``tests/models/legacy/`` under tflite-runtime (2.14 is its last release) or an
old TensorFlow, the current ones otherwise. ``mobilenet_v2(kind)`` generates the (large,
uncommitted) MobileNet v2 models into a cache on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.models import evaluate
from tests.models.make_models import DATA_FILE, LEGACY_SUBDIR, MOBILENET_FILES, MODELS_DIR

DIGITS_MODELS = (
    "digits_fp32",
    "digits_fp16",
    "digits_dynamic_int8",
    "digits_int8",
    "digits_int16x8",
    "digits_edgetpu",
    "digits_unknown_custom",
)
# Models no CPU interpreter can run: their custom operator is not registered.
UNRUNNABLE_MODELS = {
    "digits_edgetpu": "edgetpu-custom-op",
    "digits_unknown_custom": "EdgeloopNoSuchOp",
}
LEGACY_BEFORE = (2, 15)  # runtimes older than this get the TF 2.14 conversions
REGENERATE = "/work/venv/bin/python -m tests.models.make_models (see tests/models/README.md)"


def active_runtime() -> str:
    """EDGELOOP_RUNTIME if set, else the first importable of ai_edge_litert, tflite_runtime,
    tensorflow ("ai-edge-litert" | "tflite-runtime" | "tensorflow")."""
    return evaluate.active_runtime()


def runtime_version(runtime: str | None = None) -> str | None:
    return evaluate.runtime_version(runtime or active_runtime())


def uses_legacy_models(runtime: str | None = None) -> bool:
    name = runtime or active_runtime()
    if name == "tflite-runtime":
        return True
    version = runtime_version(name) if name == "tensorflow" else None
    if version is None:
        return False
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) < LEGACY_BEFORE


def model(name: str) -> Path:
    """Path of committed digits model ``name`` (see DIGITS_MODELS) for the active runtime."""
    if name not in DIGITS_MODELS:
        raise ValueError(f"unknown test model {name!r}; expected one of {DIGITS_MODELS}")
    base = MODELS_DIR / LEGACY_SUBDIR if uses_legacy_models() else MODELS_DIR
    path = base / f"{name}.tflite"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate with {REGENERATE}")
    return path


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits test set: x float32 (360, 8, 8, 1) in [0, 1], labels int64 in 0..9."""
    with np.load(MODELS_DIR / DATA_FILE) as npz:
        return npz["x"], npz["labels"]


def model_cache_dir() -> Path:
    env = os.environ.get("EDGELOOP_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeloop" / "models"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise generation between concurrent test processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mobilenet_v2(kind: str) -> Path:
    """MobileNet v2 224x224x3 (random weights, seed 0): kind "fp32" or "int8" (uint8 I/O).

    Generated on first use into EDGELOOP_MODEL_CACHE (default ~/.cache/edgeloop/models) by
    ``make_models.make_mobilenet`` in a child process, so TensorFlow never shares a process
    (and its RSS) with the runtime under test. Skips the test when the file is absent and
    TensorFlow is not installed.
    """
    if kind not in MOBILENET_FILES:
        raise ValueError(
            f"unknown MobileNet v2 kind {kind!r}; expected one of {sorted(MOBILENET_FILES)}"
        )
    cache = model_cache_dir()
    path = cache / MOBILENET_FILES[kind]
    if path.is_file():
        return path
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip(
            f"{path} is not cached and TensorFlow is not installed to generate it; run "
            f"`python -m tests.models.make_models --mobilenet {cache}` where TensorFlow is "
            "installed (or set EDGELOOP_MODEL_CACHE to a directory holding the models)"
        )
    with _locked(cache):
        if not path.is_file():
            cmd = [sys.executable, "-m", "tests.models.make_models", "--mobilenet", str(cache)]
            proc = subprocess.run(
                cmd,
                check=False,
                cwd=MODELS_DIR.parents[1],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if proc.returncode != 0 or not path.is_file():
                raise RuntimeError(
                    f"generating MobileNet v2 failed ({' '.join(cmd)}): {proc.stderr[-2000:]}"
                )
    return path
