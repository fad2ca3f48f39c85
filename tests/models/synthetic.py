"""Synthetic custom-op models made by rewriting a real converted model's flatbuffer.

There is no ``edgetpu_compiler`` here, so ``fake_edgetpu`` reshapes a full-int8 model the way
the compiler does: the whole graph becomes one CUSTOM operator ``edgetpu-custom-op`` between the
(quantized) model input and output, intermediate tensors and weight buffers are gone, and the
operator's custom options are a FlexBuffer map. A CPU interpreter cannot resolve that op, exactly
like a real compiled model without the Edge TPU delegate. ``unknown_custom`` keeps a real graph
and swaps its SOFTMAX for a CUSTOM op nobody implements.

Both edit TensorFlow's flatc-generated object API (``schema_py_generated``), never raw offsets.
"""

from __future__ import annotations

from typing import Any

EDGETPU_CUSTOM_CODE = "edgetpu-custom-op"
UNKNOWN_CUSTOM_CODE = "EdgeloopNoSuchOp"
SYNTHETIC_NOTE = "edgeloop synthetic model: flatbuffer rewrite, not edgetpu_compiler output"


def _schema() -> tuple[Any, Any]:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def _custom_opcode(schema: Any, code: str) -> Any:
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = schema.BuiltinOperator.CUSTOM
    opcode.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    opcode.customCode = code
    opcode.version = 1
    return opcode


def _flexbuffer_options(values: dict[str, Any]) -> list[int]:
    from flatbuffers import flexbuffers  # type: ignore[import-untyped]

    return list(flexbuffers.Dumps(values))


def fake_edgetpu(int8_model: bytes) -> bytes:
    """``int8_model`` (one subgraph, one input, one output) as a synthetic Edge TPU model."""
    schema, fbu = _schema()
    model = fbu.convert_bytearray_to_object(bytearray(int8_model))
    if len(model.subgraphs) != 1:
        raise ValueError("fake_edgetpu expects a single-subgraph model")
    sg = model.subgraphs[0]
    keep = [*sg.inputs, *sg.outputs]
    remap = {old: new for new, old in enumerate(keep)}

    # Buffer 0 stays the empty sentinel; metadata buffers survive, weights do not.
    buffers = [schema.BufferT()]
    for meta in model.metadata or []:
        buffers.append(model.buffers[meta.buffer])
        meta.buffer = len(buffers) - 1
    tensors = [sg.tensors[i] for i in keep]
    for tensor in tensors:
        tensor.buffer = 0

    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [remap[i] for i in sg.inputs]
    op.outputs = [remap[i] for i in sg.outputs]
    op.customOptions = _flexbuffer_options(
        {"edgeloop_synthetic": True, "source_ops": len(sg.operators), "note": SYNTHETIC_NOTE}
    )
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS

    sg.tensors = tensors
    sg.inputs = [remap[i] for i in sg.inputs]
    sg.outputs = [remap[i] for i in sg.outputs]
    sg.operators = [op]
    model.operatorCodes = [_custom_opcode(schema, EDGETPU_CUSTOM_CODE)]
    model.buffers = buffers
    for sig in model.signatureDefs or []:
        for tmap in [*(sig.inputs or []), *(sig.outputs or [])]:
            tmap.tensorIndex = remap[tmap.tensorIndex]
    model.description = SYNTHETIC_NOTE
    return bytes(fbu.convert_object_to_bytearray(model))


def unknown_custom(source_model: bytes) -> bytes:
    """``source_model`` with its SOFTMAX operator code replaced by CUSTOM ``EdgeloopNoSuchOp``."""
    schema, fbu = _schema()
    model = fbu.convert_bytearray_to_object(bytearray(source_model))
    softmax = [
        i
        for i, code in enumerate(model.operatorCodes)
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.SOFTMAX
    ]
    if len(softmax) != 1:
        raise ValueError("unknown_custom expects exactly one SOFTMAX operator code")
    index = softmax[0]
    model.operatorCodes[index] = _custom_opcode(schema, UNKNOWN_CUSTOM_CODE)
    for sg in model.subgraphs:
        for op in sg.operators:
            if op.opcodeIndex == index:
                op.builtinOptionsType = 0
                op.builtinOptions = None
                op.customOptions = _flexbuffer_options({"edgeloop_synthetic": True})
                op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    model.description = SYNTHETIC_NOTE
    return bytes(fbu.convert_object_to_bytearray(model))
