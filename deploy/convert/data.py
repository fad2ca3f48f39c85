"""Calibration and validation data: ``.npz``, a folder of ``.npy``, or a folder of images.

Every loader returns a :class:`Dataset`: one array per model input (first axis = samples, in
the float model's domain), optional integer ``labels``, and a content fingerprint for the cache.

- ``.npz``: arrays named after the model inputs (signature name such as ``image``, or tensor
  name such as ``serving_default_image:0``), or ``arr_0``, ``arr_1``... by position; ``labels``
  is optional (used when it has one entry per sample). ``FILE.npz#key1,key2`` picks arrays
  explicitly (one per input, in input order).
  With several candidate arrays and one input, the role decides: ``calib``/``calibration`` for
  calibration, ``x``/``validation``/``val``/``test`` for validation.
- folder of ``.npy``: *per input* when every input has its ``<name>.npy`` (or ``arr_<i>.npy``),
  each with the samples on the first axis; otherwise *per sample*: every other ``.npy`` (sorted
  by file name) is one sample of the single input. ``labels.npy`` is optional in both.
- folder of images (png, jpg, jpeg, bmp, gif, webp): resized to the input's height and width,
  converted to 1 or 3 channels, scaled to [0, 1] for float inputs (``image_range="-1,1"`` for
  [-1, 1]) or kept as pixels for uint8 (pixel - 128 for int8). Images in sub-folders get the
  sub-folder as their label (sorted names -> 0, 1, ...; integer names are used as they are).

Samples whose shape lacks the batch axis get one; a sample with the right number of elements
but another shape (e.g. (8, 8) for (1, 8, 8, 1)) is reshaped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConfigError
from agent.runtime.modelinfo import ModelInfo, TensorInfo

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
LABELS = "labels"
ROLE_KEYS = {
    "calibration": ("calib", "calibration"),
    "validation": ("x", "validation", "val", "test"),
    "train": ("train", "x"),
}


@dataclass(frozen=True, eq=False)
class InputSpec:
    """One model input as the data loaders see it."""

    name: str  # the name the data is matched by (signature name when known)
    shape: tuple[int, ...]  # shape_signature (-1 = dynamic)
    dtype: str
    aliases: tuple[str, ...]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


@dataclass(frozen=True, eq=False)
class Dataset:
    arrays: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    labels: np.ndarray | None
    source: str
    fingerprint: str

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0]) if self.arrays else 0

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (a new fingerprint)."""
        arrays = tuple(a[:n] for a in self.arrays)
        labels = None if self.labels is None else self.labels[:n]
        return make_dataset(arrays, self.names, labels, f"{self.source}[:{n}]")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": len(self),
            "inputs": {n: list(a.shape) for n, a in zip(self.names, self.arrays, strict=True)},
            "labels": self.labels is not None,
            "fingerprint": self.fingerprint,
        }


def make_dataset(
    arrays: Sequence[np.ndarray], names: Sequence[str], labels: np.ndarray | None, source: str
) -> Dataset:
    digest = hashlib.sha256()
    for name, arr in zip(names, arrays, strict=True):
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    if labels is not None:
        digest.update(b"labels" + np.ascontiguousarray(labels).tobytes())
    counts = {int(a.shape[0]) for a in arrays}
    if labels is not None:
        counts.add(len(labels))
    if len(counts) > 1:
        raise ConfigError(
            f"{source}: inputs and labels have different sample counts {sorted(counts)}",
            hint="every array needs the samples on its first axis, the same number each",
        )
    return Dataset(tuple(arrays), tuple(names), labels, source, digest.hexdigest())


def input_specs(info: ModelInfo) -> list[InputSpec]:
    """The model's inputs, each named by its signature name when one matches the tensor."""
    sig_names: list[str] = []
    for sig in info.signatures[:1]:
        sig_names = [str(n) for n in sig.get("inputs", [])]
    specs = []
    for pos, tensor in enumerate(info.inputs):
        aliases = _aliases(tensor)
        matches = [n for n in sig_names if n in tensor.name]
        name = max(matches, key=len) if matches else aliases[-1]
        specs.append(
            InputSpec(
                name,
                tensor.shape_signature or tensor.shape,
                tensor.dtype,
                (*aliases, name, f"arr_{pos}"),
            )
        )
    return specs


def _aliases(tensor: TensorInfo) -> tuple[str, ...]:
    name = tensor.name
    bare = name.split(":")[0]
    short = bare.removeprefix("serving_default_")
    return tuple(dict.fromkeys((name, bare, short)))


def load_data(
    path: str | Path,
    specs: Sequence[InputSpec],
    role: str = "validation",
    *,
    image_range: str = "0,1",
) -> Dataset:
    """Load ``path`` (see module doc) for a model with inputs ``specs``."""
    text = str(path)
    base, _, keys = text.partition("#")
    where = Path(base)
    if not where.exists():
        raise ConfigError(f"{role} data not found: {where}", hint="give an .npz file or a folder")
    if where.is_file():
        if where.suffix != ".npz":
            raise ConfigError(
                f"{where}: unsupported {role} data file", hint="use .npz or a folder of .npy/images"
            )
        return _from_npz(where, specs, role, [k for k in keys.split(",") if k])
    if any(p.suffix == ".npy" for p in where.iterdir()):
        return _from_npy_folder(where, specs)
    return _from_images(where, specs, image_range)


def _fit(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """``arr`` as (samples, *sample_shape) in the spec's dtype (float data as float32)."""
    want = spec.sample_shape
    if arr.ndim != len(want) + 1 or not _matches(arr.shape[1:], want):
        per = int(np.prod([d for d in want if d > 0])) if all(d > 0 for d in want) else -1
        if per > 0 and arr.size % per == 0 and arr.ndim >= 1:
            arr = arr.reshape((-1, *want))
        else:
            raise ConfigError(
                f"{where}: array of shape {tuple(arr.shape)} does not fit input {spec.name!r} "
                f"of shape {spec.shape} (samples on the first axis)",
                hint="store one array per model input with the samples first",
            )
    dtype = np.float32 if spec.dtype.startswith("float") else np.dtype(spec.dtype)
    return np.asarray(arr).astype(dtype, copy=False)


def _matches(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(got) == len(want) and all(w < 0 or g == w for g, w in zip(got, want, strict=True))


def _labels(arr: Any) -> np.ndarray:
    labels = np.asarray(arr)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        labels = labels.argmax(axis=1)
    return labels.reshape(-1).astype(np.int64)


def _from_npz(path: Path, specs: Sequence[InputSpec], role: str, keys: list[str]) -> Dataset:
    with np.load(path, allow_pickle=False) as npz:
        files = list(npz.files)
        labels = _labels(npz[LABELS]) if LABELS in files else None
        if keys:
            missing = [k for k in keys if k not in files]
            if missing or len(keys) != len(specs):
                raise ConfigError(
                    f"{path}: selector #{','.join(keys)} must name {len(specs)} arrays of {files}",
                    hint="one key per model input, in input order",
                )
            chosen = keys
        else:
            chosen = _choose_npz_keys(path, files, specs, role)
        arrays = [_fit(npz[k], s, f"{path}#{k}") for k, s in zip(chosen, specs, strict=True)]
    if labels is not None and len(labels) != len(arrays[0]):
        log.info(
            "%s: 'labels' has %d entries, %s has %d samples: not its labels",
            path,
            len(labels),
            chosen[0],
            len(arrays[0]),
        )
        labels = None
    return make_dataset(arrays, [s.name for s in specs], labels, f"{path}#{','.join(chosen)}")


def _choose_npz_keys(
    path: Path, files: list[str], specs: Sequence[InputSpec], role: str
) -> list[str]:
    by_alias = []
    for spec in specs:
        hit = next((a for a in spec.aliases if a in files), None)
        by_alias.append(hit)
    if all(by_alias):
        return [str(k) for k in by_alias]
    candidates = [f for f in files if f != LABELS]
    if len(specs) == 1:
        if len(candidates) == 1:
            return candidates
        for key in ROLE_KEYS.get(role, ()):
            if key in candidates:
                return [key]
    elif len(candidates) == len(specs):
        return candidates
    raise ConfigError(
        f"{path}: cannot tell which of the arrays {files} feed the inputs "
        f"{[s.name for s in specs]} as {role} data",
        hint=f"name the arrays after the inputs or select them: {path}#KEY[,KEY...]",
    )


def _from_npy_folder(folder: Path, specs: Sequence[InputSpec]) -> Dataset:
    files = {p.stem: p for p in sorted(folder.glob("*.npy"))}
    labels = _labels(np.load(files.pop(LABELS))) if LABELS in files else None
    per_input = []
    for spec in specs:
        hit = next((a for a in spec.aliases if a in files), None)
        per_input.append(hit)
    if all(per_input):
        arrays = [
            _fit(np.load(files[str(k)]), s, str(files[str(k)]))
            for k, s in zip(per_input, specs, strict=True)
        ]
        return make_dataset(arrays, [s.name for s in specs], labels, f"{folder} (per input)")
    if len(specs) != 1:
        raise ConfigError(
            f"{folder}: per-sample .npy files need a single-input model; this one has "
            f"{[s.name for s in specs]}",
            hint="store one <input name>.npy per input with the samples on the first axis",
        )
    spec = specs[0]
    samples = [_fit(np.load(p)[np.newaxis], spec, str(p)) for p in files.values()]
    if not samples:
        raise ConfigError(f"{folder}: no sample .npy files", hint="add some data")
    arrays = [np.concatenate(samples, axis=0)]
    return make_dataset(arrays, [spec.name], labels, f"{folder} (per sample)")


def _from_images(folder: Path, specs: Sequence[InputSpec], image_range: str) -> Dataset:
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ConfigError(
            f"{folder}: image folders need a single NHWC image input; the model has "
            f"{[(s.name, s.shape) for s in specs]}",
            hint="use an .npz with one array per input",
        )
    spec = specs[0]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{folder}: no images and no .npy files", hint="check the folder")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in files} - {"."})
    labels = None
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        if all(c.isdigit() for c in classes):
            index = {c: int(c) for c in classes}
        labels = np.array([index.get(p.parent.relative_to(folder).as_posix(), -1) for p in files])
    pixels = np.stack([_read_image(p, spec) for p in files])
    arrays = [_scale(pixels, spec, image_range)]
    return make_dataset(arrays, [spec.name], labels, f"{folder} ({len(files)} images)")


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    from PIL import Image  # pillow comes with matplotlib (the host extra)

    _, height, width, channels = spec.shape
    with Image.open(path) as raw:
        img = raw.convert("L" if channels == 1 else "RGB")
        if height > 0 and width > 0:
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[..., np.newaxis] if arr.ndim == 2 else arr


def _scale(pixels: np.ndarray, spec: InputSpec, image_range: str) -> np.ndarray:
    if spec.dtype == "uint8":
        return pixels.astype(np.uint8)
    if spec.dtype == "int8":
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    low, _, high = image_range.partition(",")
    try:
        lo, hi = float(low), float(high)
    except ValueError as exc:
        raise ConfigError(f"bad image range {image_range!r}", hint="use e.g. 0,1 or -1,1") from exc
    return (pixels.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)
