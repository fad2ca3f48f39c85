"""Read a .tflite flatbuffer without an interpreter: operators, tensors, quantization, signatures.

The parse uses the generated schema bindings of the ``tflite`` package. Every structural read is
wrapped: any input that is not a well-formed TFLite flatbuffer raises :class:`ModelFileError`,
never an ``IndexError``/``struct.error`` from the flatbuffers runtime. Vector lengths are checked
against the file size before they are iterated, so a corrupt length cannot make the parse loop
for billions of steps.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tflite

from agent.errors import ModelFileError
from agent.runtime.modelinfo import ModelInfo, OperatorInfo, TensorInfo
from agent.runtime.quantscheme import classify

log = logging.getLogger(__name__)

FILE_IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
CUSTOM_CODE = 32  # BuiltinOperator.CUSTOM
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127

BUILTIN_NAMES: dict[int, str] = {
    int(value): name
    for name, value in vars(tflite.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(value, int)
}
DTYPE_NAMES: dict[int, str] = {
    int(value): name.lower()
    for name, value in vars(tflite.TensorType).items()
    if not name.startswith("_") and isinstance(value, int)
}


def builtin_name(code: int) -> str:
    """The schema name of a builtin operator code; ``BUILTIN_<n>`` for codes the schema lacks."""
    return BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def dtype_name(code: int) -> str:
    return DTYPE_NAMES.get(code, f"type_{code}")


class _CorruptError(Exception):
    """Raised inside the parse for a structural problem found by our own checks."""


def inspect(source: str | Path | bytes) -> ModelInfo:
    """Describe a .tflite model (path or bytes). Raises ModelFileError on non-TFLite input."""
    data = _read(source)
    where = "model bytes" if isinstance(source, bytes | bytearray) else str(source)
    _check_header(data, where)
    try:
        return _parse(data)
    except ModelFileError:
        raise
    except _CorruptError as exc:
        raise ModelFileError(
            f"not a TFLite flatbuffer: {where} is corrupt or truncated ({exc})",
            hint="re-export the model or re-send the file; check its sha256",
        ) from exc
    except Exception as exc:  # flatbuffers raises IndexError, struct.error, TypeError, ...
        raise ModelFileError(
            f"not a TFLite flatbuffer: {where} is corrupt or truncated "
            f"({type(exc).__name__}: {exc})",
            hint="re-export the model or re-send the file; check its sha256",
        ) from exc


def inspect_operators(source: str | Path | bytes) -> ModelInfo:
    """Only what a compatibility check needs: operator codes, versions, counts, custom ops.

    About 10x cheaper than :func:`inspect` on a large model (no tensor, quantization or hash
    work): the agent runs it on every installed model before the sandboxed probe. The result's
    ``inputs``, ``outputs`` and ``signatures`` are empty, ``quantization`` is "unknown" and
    ``sha256`` is "" (the store has verified the file's hash already).
    """
    if isinstance(source, bytes | bytearray):
        return _inspect_operators(bytes(source), "model bytes")
    # mapped, not read: only the pages the operator tables live on are touched (a 14 MB model
    # is read in ~8 ms; its operator codes sit in a few KiB)
    try:
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return _inspect_operators(b"", str(source))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _inspect_operators(mapped, str(source))
    except OSError as exc:
        raise _unreadable(source, exc) from exc


def _inspect_operators(data: bytes | mmap.mmap, where: str) -> ModelInfo:
    _check_header(data, where)
    try:
        src = _Src(data)
        model = tflite.Model.GetRootAs(data, 0)
        codes = _opcodes(model, src)
        n_sub = _bounded(model.SubgraphsLength(), 4, src, "subgraphs")
        op_counts: Counter[tuple[str, int, bool]] = Counter({code: 0 for code in codes})
        for si in range(n_sub):
            sub = model.Subgraphs(si)
            n_tensors = _bounded(sub.TensorsLength(), 4, src, "tensors")
            for code_index, _ins, _outs in _operators(sub, src, codes, n_tensors):
                op_counts[codes[code_index]] += 1
        version = int(model.Version())
    except _CorruptError as exc:
        raise ModelFileError(f"not a TFLite flatbuffer: {where} is corrupt ({exc})") from exc
    except Exception as exc:  # flatbuffers raises IndexError, struct.error, TypeError, ...
        raise ModelFileError(
            f"not a TFLite flatbuffer: {where} is corrupt or truncated "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    custom_ops = sorted({name for name, _v, custom in codes if custom})
    return ModelInfo(
        size=len(data),
        sha256="",
        version=version,
        description="",
        operators=[
            OperatorInfo(name=name, version=ver, custom=custom, count=count)
            for (name, ver, custom), count in sorted(op_counts.items())
        ],
        inputs=[],
        outputs=[],
        signatures=[],
        quantization="unknown",
        is_edgetpu=EDGETPU_CUSTOM_OP in custom_ops,
        custom_ops=custom_ops,
        subgraphs=n_sub,
    )


def _read(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise _unreadable(source, exc) from exc


def _unreadable(source: str | Path, exc: OSError) -> ModelFileError:
    return ModelFileError(
        f"cannot read model file {source}: {exc.strerror or exc}",
        hint="check the path and its permissions",
    )


def _check_header(data: bytes | mmap.mmap, where: str) -> None:
    hint = "pass a .tflite file produced by the TFLite converter"
    if len(data) == 0:
        raise ModelFileError(f"not a TFLite flatbuffer: {where} is empty (0 bytes)", hint=hint)
    if len(data) < 8:
        raise ModelFileError(
            f"not a TFLite flatbuffer: {where} is {len(data)} bytes, shorter than a header",
            hint=hint,
        )
    ident = data[4:8]
    if ident != FILE_IDENTIFIER:
        raise ModelFileError(
            f"not a TFLite flatbuffer: {where} has file identifier {ident!r}, expected b'TFL3'",
            hint=hint,
        )
    root = int.from_bytes(data[0:4], "little")
    if root < 8 or root + 4 > len(data):
        raise ModelFileError(
            f"not a TFLite flatbuffer: {where} root offset {root} is outside the "
            f"{len(data)}-byte file (truncated?)",
            hint=hint,
        )


class _Src:
    """The file bytes plus a budget of elements the parse may still read.

    Each vector length is checked against the file size; the budget also bounds the total, so
    corrupt lengths in nested vectors (tensors x shape dims) cannot add up to a near-endless loop.
    """

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.budget = 4 * len(data) + 10_000


def _bounded(length: Any, elem_size: int, src: _Src, what: str) -> int:
    """Validate a vector length read from the file against the file size and the budget."""
    n = int(length)
    if n < 0 or n * elem_size > len(src.data):
        raise _CorruptError(f"{what} claims {n} elements, more than the file can hold")
    src.budget -= n
    if src.budget < 0:
        raise _CorruptError(f"{what}: the structure lists more elements than the file holds")
    return n


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def _parse(data: bytes) -> ModelInfo:
    src = _Src(data)
    model = tflite.Model.GetRootAs(data, 0)
    codes = _opcodes(model, src)
    n_sub = _bounded(model.SubgraphsLength(), 4, src, "subgraphs")
    if n_sub == 0:
        raise _CorruptError("model has no subgraphs")
    n_buf = _bounded(model.BuffersLength(), 4, src, "buffers")
    const_buffers = _const_buffers(model, n_buf, src)

    # Every opcode is listed, even one no node uses (count 0): the runtime resolves them all.
    op_counts: Counter[tuple[str, int, bool]] = Counter({code: 0 for code in codes})
    tensors_all: list[_Tensor] = []
    io: tuple[list[TensorInfo], list[TensorInfo]] = ([], [])
    for si in range(n_sub):
        sub = model.Subgraphs(si)
        tensors = _tensors(sub, src, const_buffers)
        ops = _operators(sub, src, codes, len(tensors))
        for code_index, _ins, _outs in ops:
            op_counts[codes[code_index]] += 1
        _mark_boundaries(tensors, ops, codes)
        tensors_all.extend(tensors)
        if si == 0:
            io = (
                _io(sub.InputsAsNumpy, sub.InputsLength, tensors, src),
                _io(sub.OutputsAsNumpy, sub.OutputsLength, tensors, src),
            )

    operators = [
        OperatorInfo(name=name, version=version, custom=custom, count=count)
        for (name, version, custom), count in sorted(op_counts.items())
    ]
    custom_ops = sorted({name for name, _v, custom in codes if custom})
    op_names = {name for (name, _v, _c), count in op_counts.items() if count}
    return ModelInfo(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        version=int(model.Version()),
        description=_text(model.Description()),
        operators=operators,
        inputs=io[0],
        outputs=io[1],
        signatures=_signatures(model, src),
        quantization=classify(tensors_all, op_names),
        is_edgetpu=EDGETPU_CUSTOM_OP in custom_ops,
        custom_ops=custom_ops,
        subgraphs=n_sub,
        tensor_dtypes=dict(sorted(Counter(t.dtype for t in tensors_all).items())),
    )


def _opcodes(model: Any, src: _Src) -> list[tuple[str, int, bool]]:
    out: list[tuple[str, int, bool]] = []
    for i in range(_bounded(model.OperatorCodesLength(), 4, src, "operator codes")):
        oc = model.OperatorCodes(i)
        # Schema v3a: the real code is the max of the int8 deprecated field and the int32 field.
        raw_off = int(oc._tab.Offset(10))
        raw = struct.unpack_from("<i", src.data, raw_off + int(oc._tab.Pos))[0] if raw_off else 0
        code = max(int(oc.DeprecatedBuiltinCode()), raw)
        version = int(oc.Version())
        if code == CUSTOM_CODE:
            out.append((_text(oc.CustomCode()) or "CUSTOM", version, True))
        else:
            out.append((builtin_name(code), version, False))
    return out


def _const_buffers(model: Any, n_buf: int, src: _Src) -> set[int]:
    """Indices of buffers that hold data (constant tensors), checking each lies inside the file."""
    const: set[int] = set()
    for i in range(n_buf):
        buf = model.Buffers(i)
        n = _bounded(buf.DataLength(), 1, src, f"buffer {i}")
        if n:
            start = int(buf._tab.Vector(int(buf._tab.Offset(4))))
            if start + n > len(src.data):
                raise _CorruptError(f"buffer {i} data runs past the end of the file")
            const.add(i)
            continue
        offset, size = int(buf.Offset()), int(buf.Size())
        if size and offset > 1:  # external buffer (models > 2 GB): offset is from file start
            if offset + size > len(src.data):
                raise _CorruptError(f"buffer {i} (offset {offset}) runs past the end of the file")
            const.add(i)
    return const


@dataclass
class _Tensor:
    info: TensorInfo
    dtype: str
    const: bool
    boundary: bool = False  # float tensor at a QUANTIZE input / DEQUANTIZE output

    @property
    def scale(self) -> float | None:
        return self.info.scale


def _ints(as_numpy: Any, length: Any, src: _Src, what: str) -> tuple[int, ...]:
    n = _bounded(length(), 4, src, what)
    if n == 0:
        return ()
    return tuple(int(v) for v in as_numpy())


def _tensors(sub: Any, src: _Src, const_buffers: set[int]) -> list[_Tensor]:
    out: list[_Tensor] = []
    for i in range(_bounded(sub.TensorsLength(), 4, src, "tensors")):
        t = sub.Tensors(i)
        shape = _ints(t.ShapeAsNumpy, t.ShapeLength, src, f"tensor {i} shape")
        sig = _ints(t.ShapeSignatureAsNumpy, t.ShapeSignatureLength, src, f"tensor {i} signature")
        dtype = dtype_name(int(t.Type()))
        scale: float | None = None
        zero_point: int | None = None
        per_channel = False
        q = t.Quantization()
        if q is not None:
            n_scale = _bounded(q.ScaleLength(), 4, src, f"tensor {i} scales")
            n_zp = _bounded(q.ZeroPointLength(), 8, src, f"tensor {i} zero points")
            if n_scale:
                scale = float(q.Scale(0))
                per_channel = n_scale > 1
            if n_zp:
                zero_point = int(q.ZeroPoint(0))
        info = TensorInfo(
            name=_text(t.Name()),
            shape=shape,
            shape_signature=sig or shape,
            dtype=dtype,
            scale=scale,
            zero_point=zero_point,
            per_channel=per_channel,
        )
        out.append(_Tensor(info=info, dtype=dtype, const=int(t.Buffer()) in const_buffers))
    return out


def _operators(
    sub: Any, src: _Src, codes: list[tuple[str, int, bool]], n_tensors: int
) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    out: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
    for i in range(_bounded(sub.OperatorsLength(), 4, src, "operators")):
        op = sub.Operators(i)
        idx = int(op.OpcodeIndex())
        if not 0 <= idx < len(codes):
            raise _CorruptError(f"operator {i} uses opcode index {idx} of {len(codes)}")
        ins = _ints(op.InputsAsNumpy, op.InputsLength, src, f"operator {i} inputs")
        outs = _ints(op.OutputsAsNumpy, op.OutputsLength, src, f"operator {i} outputs")
        for t in ins + outs:
            if t >= n_tensors or t < -1:  # -1 marks an omitted optional input
                raise _CorruptError(f"operator {i} refers to tensor {t} of {n_tensors}")
        out.append((idx, ins, outs))
    return out


def _mark_boundaries(
    tensors: list[_Tensor],
    ops: list[tuple[int, tuple[int, ...], tuple[int, ...]]],
    codes: list[tuple[str, int, bool]],
) -> None:
    for code_index, ins, outs in ops:
        name = codes[code_index][0]
        if name == "QUANTIZE":
            ends = ins
        elif name == "DEQUANTIZE":
            ends = outs
        else:
            continue
        for t in ends:
            if t >= 0 and tensors[t].dtype == "float32":
                tensors[t].boundary = True


def _io(as_numpy: Any, length: Any, tensors: list[_Tensor], src: _Src) -> list[TensorInfo]:
    out = []
    for i in _ints(as_numpy, length, src, "subgraph inputs/outputs"):
        if not 0 <= i < len(tensors):
            raise _CorruptError(f"subgraph input/output refers to tensor {i} of {len(tensors)}")
        out.append(tensors[i].info)
    return out


def _signatures(model: Any, src: _Src) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(_bounded(model.SignatureDefsLength(), 4, src, "signatures")):
        sig = model.SignatureDefs(i)
        n_in = _bounded(sig.InputsLength(), 4, src, "signature inputs")
        n_out = _bounded(sig.OutputsLength(), 4, src, "signature outputs")
        out.append(
            {
                "key": _text(sig.SignatureKey()),
                "subgraph": int(sig.SubgraphIndex()),
                "inputs": [_text(sig.Inputs(j).Name()) for j in range(n_in)],
                "outputs": [_text(sig.Outputs(j).Name()) for j in range(n_out)],
            }
        )
    return out
