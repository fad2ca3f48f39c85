"""Models for the delivery fault tests, built at test time with numpy + flatbuffers (no TensorFlow).

CI's tflite-runtime venv has no TensorFlow, so these are written straight from the TFLite schema
with the ``tflite`` package's generated builder functions: one float32 subgraph, one operator.
Every function returns the ``.tflite`` bytes; the tests sign and push them like any model.

- ``fc_model``: FULLY_CONNECTED (v1) from a constant weight matrix; the building block.
- ``big_model``: a FULLY_CONNECTED whose weights make the file about ``size`` bytes (the ~5 MB
  transfer of the link-flap test) and still runs in well under a millisecond.
- ``sqrt_model``: SQRT of the input: finite for the probe's inputs in [0, 1), NaN for a
  negative input sent during the trial (a model that breaks on real data).
- ``nan_model``: weights full of NaN, so every output is NaN (the probe's finite check).
- ``wrong_shape_model``: computes 10 outputs but declares 5 (the probe's shape check).
- ``garbage``: random bytes, and ``corrupt_variants``: 0 bytes, the 8-byte header, truncated at
  50 %, random bytes and one flipped byte of a real model (RELIABILITY P8).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import flatbuffers  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import tflite

SCHEMA_VERSION = 3
FLOAT32 = 0  # tflite.TensorType.FLOAT32


def _int_vector(b: Any, values: list[int]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _offset_vector(b: Any, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _byte_vector(b: Any, data: bytes, alignment: int = 16) -> int:
    b.StartVector(1, len(data), alignment)
    b.head = b.head - len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return int(b.EndVector())


def _table(b: Any, table: str, **fields: Any) -> int:
    """One table of the TFLite schema: ``<table>Start``, ``<table>Add<Field>`` for each of
    ``fields`` in the order given, ``<table>End``."""
    getattr(tflite, f"{table}Start")(b)
    for name, value in fields.items():
        getattr(tflite, f"{table}Add{name}")(b, value)
    return int(getattr(tflite, f"{table}End")(b))


def _tensor(b: Any, name: str, shape: list[int], buffer: int) -> int:
    name_off = b.CreateString(name)
    shape_off = _int_vector(b, shape)
    return _table(b, "Tensor", Shape=shape_off, Type=FLOAT32, Buffer=buffer, Name=name_off)


def _buffer(b: Any, data: bytes | None) -> int:
    data_off = _byte_vector(b, data) if data else None
    tflite.BufferStart(b)
    if data_off is not None:
        tflite.BufferAddData(b, data_off)
    return int(tflite.BufferEnd(b))


def _single_op_model(
    op_code: int,
    tensors: list[tuple[str, list[int], bytes | None]],
    op_inputs: list[int],
    op_outputs: list[int],
    *,
    options: tuple[int, Any] | None = None,
    description: str,
) -> bytes:
    """One subgraph, one operator. ``tensors``: (name, shape, constant data or None); tensors
    without data that are not operator outputs become the subgraph inputs."""
    b = flatbuffers.Builder(1024 + sum(len(d or b"") for _, _, d in tensors))
    # buffer 0 is the empty sentinel; each tensor gets its own buffer (empty for activations)
    buffers = [_buffer(b, None)] + [_buffer(b, data) for _, _, data in tensors]
    tensor_offs = [_tensor(b, n, s, i + 1) for i, (n, s, _) in enumerate(tensors)]
    graph_inputs = [
        i for i, (_, _, data) in enumerate(tensors) if data is None and i not in op_outputs
    ]
    opts_off = options[1](b) if options else None
    ins, outs = _int_vector(b, op_inputs), _int_vector(b, op_outputs)
    op_fields: dict[str, Any] = {"OpcodeIndex": 0, "Inputs": ins, "Outputs": outs}
    if options is not None and opts_off is not None:
        op_fields |= {"BuiltinOptionsType": options[0], "BuiltinOptions": opts_off}
    op = _table(b, "Operator", **op_fields)

    tensors_vec = _offset_vector(b, tensor_offs)
    g_in, g_out = _int_vector(b, graph_inputs), _int_vector(b, op_outputs)
    ops_vec = _offset_vector(b, [op])
    sg_name = b.CreateString("main")
    subgraph = _table(
        b,
        "SubGraph",
        Tensors=tensors_vec,
        Inputs=g_in,
        Outputs=g_out,
        Operators=ops_vec,
        Name=sg_name,
    )
    opcode = _table(
        b, "OperatorCode", DeprecatedBuiltinCode=op_code, BuiltinCode=op_code, Version=1
    )

    opcodes_vec = _offset_vector(b, [opcode])
    subgraphs_vec = _offset_vector(b, [subgraph])
    buffers_vec = _offset_vector(b, buffers)
    desc = b.CreateString(description)
    model = _table(
        b,
        "Model",
        Version=SCHEMA_VERSION,
        OperatorCodes=opcodes_vec,
        Subgraphs=subgraphs_vec,
        Description=desc,
        Buffers=buffers_vec,
    )
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def _fc_options(b: Any) -> int:
    return _table(b, "FullyConnectedOptions", FusedActivationFunction=0)  # NONE


def fc_model(
    in_features: int,
    out_features: int,
    *,
    weights: npt.NDArray[np.float32] | None = None,
    seed: int = 0,
    declared_out: int | None = None,
    description: str = "edgeloop test model: fully connected",
) -> bytes:
    """input [1, in] float32 -> FULLY_CONNECTED(weights [out, in], no bias) -> [1, out].

    ``declared_out`` writes another output shape into the file than the one computed."""
    if weights is None:
        rng = np.random.default_rng(seed)
        weights = (rng.standard_normal((out_features, in_features)) * 0.05).astype(np.float32)
    assert weights.shape == (out_features, in_features)
    tensors: list[tuple[str, list[int], bytes | None]] = [
        ("input", [1, in_features], None),
        ("weights", [out_features, in_features], weights.astype("<f4").tobytes()),
        ("output", [1, declared_out or out_features], None),
    ]
    return _single_op_model(
        tflite.BuiltinOperator.FULLY_CONNECTED,
        tensors,
        [0, 1],
        [2],
        options=(tflite.BuiltinOptions.FullyConnectedOptions, _fc_options),
        description=description,
    )


def big_model(size: int = 5 * 2**20, *, seed: int = 0, in_features: int = 1024) -> bytes:
    """A FULLY_CONNECTED model of about ``size`` bytes (random float32 weights)."""
    out_features = max(1, math.ceil(size / (4 * in_features)))
    return fc_model(
        in_features, out_features, seed=seed, description=f"edgeloop test model: ~{size} bytes"
    )


def sqrt_model(n: int = 4) -> bytes:
    """SQRT of a [1, n] float input: NaN exactly for negative inputs."""
    return _single_op_model(
        tflite.BuiltinOperator.SQRT,
        [("input", [1, n], None), ("output", [1, n], None)],
        [0],
        [1],
        description="edgeloop test model: sqrt (NaN on negative input)",
    )


def nan_model(in_features: int = 16, out_features: int = 4) -> bytes:
    """Every output is NaN (NaN weights)."""
    w = np.full((out_features, in_features), np.nan, dtype=np.float32)
    return fc_model(
        in_features, out_features, weights=w, description="edgeloop test model: NaN outputs"
    )


def wrong_shape_model() -> bytes:
    """Computes [1, 10] but the file declares the output as [1, 5]."""
    return fc_model(16, 10, declared_out=5, description="edgeloop test model: wrong shape")


def garbage(size: int = 20_000, seed: int = 0) -> bytes:
    """Random bytes (not a flatbuffer at all)."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def flip_byte(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


def schema_version_offset(model: bytes) -> int:
    """File offset of the low byte of ``Model.version`` (field 0 of the root table)."""
    root = struct.unpack_from("<I", model, 0)[0]
    vtable = root - struct.unpack_from("<i", model, root)[0]
    field = struct.unpack_from("<H", model, vtable + 4)[0]
    if field == 0:
        raise ValueError("the model does not store a schema version")
    return int(root + field)


def corrupt_variants(model: bytes) -> dict[str, bytes]:
    """The P8 family from one real model. ``flipped`` inverts one byte, the schema version
    (3 -> 252): the file still parses as a flatbuffer, so it passes the agent's own inspection
    and reaches the interpreter in the sandbox, which must refuse it."""
    return {
        "empty": b"",
        "header8": model[:8],
        "truncated50": model[: len(model) // 2],
        "random": garbage(len(model), seed=8),
        "flipped": flip_byte(model, schema_version_offset(model)),
    }
