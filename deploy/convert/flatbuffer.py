"""Small edits of .tflite flatbuffers through the flatc object API (no TensorFlow needed).

ai-edge-quantizer calibrates and validates through SignatureDefs; models exported by older
tools or other frameworks often have none. ``ensure_signature`` adds a ``serving_default``
signature whose entries are the main subgraph's inputs and outputs (names from the tensor
names), so such a model quantizes like any other. The schema is ai-edge-litert's generated
``schema_py_generated`` (the same one ai-edge-quantizer uses), falling back to TensorFlow's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DEFAULT_SIGNATURE = "serving_default"


def _modules() -> tuple[Any, Any]:
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils as fbu
    except ImportError:  # pragma: no cover - TensorFlow-only hosts
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils as fbu
    return schema, fbu


def _name(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def signature_name(tensor_name: str, used: set[str]) -> str:
    """A clean, unique signature entry name from a tensor name."""
    base = tensor_name.split(":", 1)[0].removeprefix(f"{DEFAULT_SIGNATURE}_")
    base = re.sub(r"[^0-9A-Za-z_]+", "_", base.split(";")[0]).strip("_") or "tensor"
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


def has_signature(model: bytes) -> bool:
    schema, _ = _modules()
    return bool(schema.Model.GetRootAsModel(bytearray(model), 0).SignatureDefsLength())


def ensure_signature(model: bytes) -> tuple[bytes, bool]:
    """``model`` with a default signature over subgraph 0 when it has none; (bytes, added)."""
    if has_signature(model):
        return model, False
    schema, fbu = _modules()
    obj = fbu.convert_bytearray_to_object(bytearray(model))
    sub = obj.subgraphs[0]
    sig = schema.SignatureDefT()
    sig.signatureKey = DEFAULT_SIGNATURE
    sig.subgraphIndex = 0
    for attr, indices in (("inputs", sub.inputs), ("outputs", sub.outputs)):
        used: set[str] = set()
        entries = []
        for index in indices:
            tmap = schema.TensorMapT()
            tmap.name = signature_name(_name(sub.tensors[index].name), used)
            tmap.tensorIndex = int(index)
            entries.append(tmap)
        setattr(sig, attr, entries)
    obj.signatureDefs = [sig]
    return bytes(fbu.convert_object_to_bytearray(obj)), True


def strip_signatures(model: bytes) -> bytes:
    """``model`` without SignatureDefs (what many third-party exporters produce)."""
    _, fbu = _modules()
    obj = fbu.convert_bytearray_to_object(bytearray(model))
    obj.signatureDefs = []
    return bytes(fbu.convert_object_to_bytearray(obj))


@dataclass(frozen=True)
class GraphOp:
    index: int
    name: str  # builtin operator name, e.g. CONV_2D
    inputs: tuple[str, ...]  # non-constant input tensor names
    outputs: tuple[str, ...]


def graph_ops(model: bytes) -> list[GraphOp]:
    """The operators of subgraph 0 with their activation input and output tensor names."""
    schema, fbu = _modules()
    obj = fbu.convert_bytearray_to_object(bytearray(model))
    sub = obj.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}
    ops = []
    for i, op in enumerate(sub.operators or []):
        code = obj.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = _name(code.customCode)
        ins = []
        for t in op.inputs if op.inputs is not None else []:
            if t < 0:
                continue
            buf = obj.buffers[sub.tensors[t].buffer]
            if buf.data is None or len(buf.data) == 0:
                ins.append(_name(sub.tensors[t].name))
        outs = tuple(_name(sub.tensors[t].name) for t in op.outputs if t >= 0)
        ops.append(GraphOp(i, name, tuple(ins), outs))
    return ops
