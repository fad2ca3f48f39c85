"""Which quantization scheme a model uses, by what is quantized in it (``classify``).

A model with no quantized weight or activation is float whatever other dtypes it carries; see
:func:`classify`. Used by :func:`agent.runtime.modelfile.inspect`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Integer dtypes a quantized tensor can have (with a scale); int32/int64 are quantized biases of
# int8/int16x8 models when they carry a scale, and shape/index tensors when they do not.
_QUANT_DTYPES = frozenset({"int4", "int8", "uint8", "int16", "int32", "int64"})
_NARROW_QUANT = frozenset({"int4", "int8", "uint8", "int16"})
# Tensors computed in floating point: anything real or complex, any width.
_FLOAT_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16", "complex64", "complex128"})


class TensorLike(Protocol):
    @property
    def dtype(self) -> str: ...
    @property
    def const(self) -> bool: ...
    @property
    def boundary(self) -> bool: ...  # float tensor at a QUANTIZE input / DEQUANTIZE output
    @property
    def scale(self) -> float | None: ...


def _quantized(t: TensorLike) -> bool:
    """An integer tensor with a scale: a quantized value (not an index, a shape or a flag)."""
    if t.dtype not in _QUANT_DTYPES:
        return False
    if t.scale is not None:
        return True
    return t.dtype in _NARROW_QUANT and not t.const  # int8/int16 activations without a scale


def classify(tensors: Sequence[TensorLike], op_names: set[str]) -> str:
    """Name the quantization scheme by what is quantized.

    A model with no quantized weight or activation is float (``fp32``, or ``fp16`` with float16
    weights) whatever other dtypes it carries: complex64 (an RFFT front-end), bool, int32/int64
    shape tensors, strings. Only integer tensors with a scale (and int8/int16 activations) count
    as quantized; float and complex activations count as float compute.
    """
    q_weights = {t.dtype for t in tensors if t.const and _quantized(t)}
    q_acts = {t.dtype for t in tensors if not t.const and _quantized(t)}
    f_weights = {t.dtype for t in tensors if t.const and t.dtype in _FLOAT_DTYPES}
    f_acts = {
        t.dtype for t in tensors if not t.const and not t.boundary and t.dtype in _FLOAT_DTYPES
    }
    if not q_weights and not q_acts:
        return "fp16" if "float16" in f_weights and "DEQUANTIZE" in op_names else "fp32"
    narrow_acts = q_acts & _NARROW_QUANT
    if narrow_acts and not f_acts:
        if narrow_acts <= {"int8", "uint8"} and "float32" not in f_weights:
            return "int8"
        if "int16" in narrow_acts and narrow_acts <= {"int16", "int8"} and "int8" in q_weights:
            return "int16x8"
    if not narrow_acts and q_weights & {"int8", "uint8"} and "float16" not in f_weights:
        return "dynamic-int8"
    return "mixed"
