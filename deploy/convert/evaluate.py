"""Host evaluation of a variant with the device runtime (``agent.runtime.load_model`` on CPU).

Inputs come from a :class:`~deploy.convert.data.Dataset` in the float domain and are quantized
with each variant's own input scale and zero point; outputs are dequantized with the output's
parameters, so every variant is compared in float. Metrics:

- ``accuracy``: top-1 of the first output against the labels (when the data has labels and the
  output is a class vector);
- ``agreement``: top-1 match rate with the float reference's predictions;
- ``snr_db``: 10 log10(sum(ref^2) / sum((ref - out)^2)) over all outputs, capped at
  ``SNR_CAP_DB`` (identical outputs).

One sample per invoke; a dynamic batch axis is resized to 1, a fixed batch B > 1 is fed B
samples at a time (the remainder is dropped and said so in the log).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import load_model
from agent.runtime.modelfile import inspect
from agent.wire.record import Record
from deploy.convert.data import Dataset, input_specs

log = logging.getLogger(__name__)

SNR_CAP_DB = 200.0
Outputs = list[np.ndarray]


@dataclass(frozen=True)
class Evaluation(Record):
    samples: int
    accuracy: float | None
    agreement: float | None
    snr_db: float | None
    seconds: float
    runtime: str
    data: str  # the dataset fingerprint


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale or x.dtype.kind != "f":
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / float(scale) + int(zero)), info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return q.astype(np.float32)
    return ((q.astype(np.float32) - float(zero)) * float(scale)).astype(np.float32)


def _order(model: Path, data: Dataset) -> list[int]:
    """For each model input (in order), the index of the dataset array that feeds it."""
    specs = input_specs(inspect(model))
    if len(specs) != len(data.arrays):
        raise ValueError(f"model has {len(specs)} inputs, data has {len(data.arrays)} arrays")
    order = []
    for pos, spec in enumerate(specs):
        hit = next((i for i, n in enumerate(data.names) if n in spec.aliases), None)
        order.append(pos if hit is None else hit)
    return order if sorted(order) == list(range(len(specs))) else list(range(len(specs)))


def run_model(
    model: str | Path,
    data: Dataset,
    *,
    threads: int = 1,
    on_sample: Callable[[int], None] | None = None,
) -> Outputs:
    """Float outputs of ``model`` on every sample of ``data`` (one array per output)."""
    return _run(Path(model), data, threads, on_sample)[0]


def _run(
    path: Path, data: Dataset, threads: int, on_sample: Callable[[int], None] | None
) -> tuple[Outputs, str]:
    loaded = load_model(path, "cpu", threads=threads)
    runtime = f"{loaded.runtime} {loaded.runtime_version}"
    interp = loaded.interpreter
    ins = interp.get_input_details()
    order = _order(path, data)
    batch = _batch_size(ins)
    n = (len(data) // batch) * batch
    if n < len(data):
        log.warning(
            "%s has a fixed batch of %d: evaluating %d of %d samples", path, batch, n, len(data)
        )
    collected: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        for detail, src in zip(ins, order, strict=True):
            x = data.arrays[src][start : start + batch]
            if tuple(detail["shape"]) != x.shape:
                interp.resize_tensor_input(detail["index"], list(x.shape))
                interp.allocate_tensors()
                ins = interp.get_input_details()
                detail = next(d for d in ins if d["index"] == detail["index"])  # noqa: PLW2901
            interp.set_tensor(detail["index"], _quantize(x, detail))
        interp.invoke()
        outs = interp.get_output_details()
        collected.append([_dequantize(interp.get_tensor(d["index"]), d) for d in outs])
        if on_sample is not None:
            on_sample(start + batch)
    if not collected:
        return [], runtime
    outputs = [np.concatenate([c[k] for c in collected]) for k in range(len(collected[0]))]
    return outputs, runtime


def _batch_size(details: Sequence[dict[str, Any]]) -> int:
    sig = details[0].get("shape_signature")
    shape = details[0]["shape"]
    first = int(sig[0]) if sig is not None and len(sig) else int(shape[0]) if len(shape) else 1
    return first if first > 1 else 1


def top1(outputs: Outputs) -> np.ndarray | None:
    """Argmax of the first output per sample, or None when it is not a class vector."""
    if not outputs or outputs[0].ndim < 2 or outputs[0].shape[-1] < 2:
        return None
    first = outputs[0]
    return np.asarray(first.reshape(first.shape[0], -1).argmax(axis=1))


def snr_db(reference: Outputs, outputs: Outputs) -> float | None:
    pairs = [(r, o) for r, o in zip(reference, outputs, strict=False) if r.shape == o.shape]
    if not pairs:
        return None
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r, _ in pairs)
    noise = sum(float(np.sum(np.square(r.astype(np.float64) - o))) for r, o in pairs)
    if noise <= 0.0:
        return SNR_CAP_DB
    if signal <= 0.0:
        return -SNR_CAP_DB
    return round(min(SNR_CAP_DB, 10.0 * math.log10(signal / noise)), 3)


def evaluate(
    model: str | Path,
    data: Dataset,
    reference: Outputs | None = None,
    *,
    threads: int = 1,
    on_sample: Callable[[int], None] | None = None,
) -> tuple[Evaluation, Outputs]:
    """Metrics of ``model`` on ``data`` (see module doc), and its outputs for later comparisons."""
    start = time.perf_counter()
    outputs, runtime = _run(Path(model), data, threads, on_sample)
    preds = top1(outputs)
    accuracy = agreement = None
    n = len(outputs[0]) if outputs else 0
    if preds is not None and data.labels is not None:
        accuracy = round(float(np.mean(preds == data.labels[:n])), 4)
    snr = None
    if reference is not None:
        ref_preds = top1(reference)
        if preds is not None and ref_preds is not None and len(ref_preds) == len(preds):
            agreement = round(float(np.mean(preds == ref_preds)), 4)
        snr = snr_db(reference, outputs)
    result = Evaluation(
        samples=n,
        accuracy=accuracy,
        agreement=agreement,
        snr_db=snr,
        seconds=round(time.perf_counter() - start, 3),
        runtime=runtime,
        data=data.fingerprint,
    )
    return result, outputs
