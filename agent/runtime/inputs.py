"""Random but realistic model inputs, built from the interpreter's own input details.

Dtype and quantization are read from ``interpreter.get_input_details()``, never assumed:

- float16/32/64: uniform in [0, 1) (the range image and feature models are trained on here).
- int8/uint8/int16 with a quantization scale: real values uniform in [0, 1) quantized with the
  tensor's own ``scale``/``zero_point`` (``q = round(r / scale) + zero_point``), clipped to the
  dtype range; per-axis parameters are honoured along ``quantized_dimension``.
- int8/uint8/int16 without quantization (scale 0): uniform over the whole dtype range.
- int32/int64 (indices, token ids, lengths) and other unquantized integers wider than 16 bits:
  uniform in [0, 10), small enough to be a valid index into most tables.
- bool: fair coin.

Dynamic dimensions (``-1`` in ``shape_signature``) take the allocated size from ``shape`` when
that is positive, else 1. Other dtypes (string, complex, resource) raise IncompatibleModelError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import IncompatibleModelError

SMALL_INT_HIGH = 10
_NARROW_INTS = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16))


def input_shape(detail: Mapping[str, Any]) -> tuple[int, ...]:
    """The concrete shape to feed for one input (dynamic dims -> allocated size or 1)."""
    shape = [int(d) for d in np.asarray(detail.get("shape", ()), dtype=np.int64).reshape(-1)]
    raw_sig = detail.get("shape_signature")
    signature = (
        [int(d) for d in np.asarray(raw_sig, dtype=np.int64).reshape(-1)]
        if raw_sig is not None and len(raw_sig) > 0
        else list(shape)
    )
    if len(shape) != len(signature):
        shape = list(signature)
    out: list[int] = []
    for allocated, declared in zip(shape, signature, strict=True):
        if declared >= 0:
            out.append(declared)
        else:
            out.append(allocated if allocated > 0 else 1)
    return tuple(out)


def _quant_params(detail: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """(scales, zero_points, axis) from the details; empty arrays when not quantized."""
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float64).reshape(-1)
    zeros = np.asarray(qp.get("zero_points", ()), dtype=np.int64).reshape(-1)
    axis = int(qp.get("quantized_dimension", 0) or 0)
    if scales.size == 0:
        legacy = detail.get("quantization")
        if legacy is not None and len(legacy) == 2 and float(legacy[0]) != 0.0:
            scales = np.asarray([float(legacy[0])])
            zeros = np.asarray([int(legacy[1])])
    if zeros.size == 0 and scales.size > 0:
        zeros = np.zeros_like(scales, dtype=np.int64)
    return scales, zeros, axis


def _broadcast(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Shape per-axis parameters so they broadcast along ``axis`` of an ``ndim`` tensor."""
    if values.size == 1 or ndim == 0:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _quantized(
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    detail: Mapping[str, Any],
    rng: np.random.Generator,
) -> npt.NDArray[Any] | None:
    scales, zeros, axis = _quant_params(detail)
    if scales.size == 0 or not np.all(scales > 0):
        return None
    ndim = len(shape)
    if scales.size > 1 and (axis >= ndim or shape[axis] != scales.size):
        raise IncompatibleModelError(
            f"input {detail.get('name')!r}: {scales.size} per-axis scales do not match "
            f"dimension {axis} of shape {shape}",
            hint="the model's quantization parameters are inconsistent; re-export it",
        )
    real = rng.random(shape, dtype=np.float64)
    q = np.rint(real / _broadcast(scales, axis, ndim)) + _broadcast(zeros, axis, ndim)
    info = np.iinfo(dtype)
    out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(dtype)
    return out


def random_input(detail: Mapping[str, Any], rng: np.random.Generator) -> npt.NDArray[Any]:
    """One random input array for one entry of ``get_input_details()``."""
    shape = input_shape(detail)
    try:
        dtype = np.dtype(detail["dtype"])
    except (KeyError, TypeError) as exc:
        raise IncompatibleModelError(
            f"input {detail.get('name')!r} has no usable dtype ({detail.get('dtype')!r})",
            hint="the interpreter's input details are incomplete; check the runtime install",
        ) from exc
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float64).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        quantized = _quantized(shape, dtype, detail, rng)
        if quantized is not None:
            return quantized
        info = np.iinfo(dtype)
        if dtype in _NARROW_INTS:
            return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
        return rng.integers(0, SMALL_INT_HIGH, size=shape, dtype=dtype)
    raise IncompatibleModelError(
        f"input {detail.get('name')!r} has dtype {dtype}, which edgeloop cannot generate "
        "random inputs for",
        hint="benchmark and probe support numeric and bool inputs only",
    )


def random_inputs(
    input_details: Sequence[Mapping[str, Any]], rng: np.random.Generator
) -> list[npt.NDArray[Any]]:
    """One random array per input, in the order of ``input_details``."""
    return [random_input(detail, rng) for detail in input_details]
