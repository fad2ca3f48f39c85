"""What :func:`agent.runtime.modelfile.inspect` reports about a model: its operators, tensors,
quantization and signatures (pure data, JSON-ready through ``to_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agent.wire.record import Record


@dataclass(frozen=True)
class OperatorInfo(Record):
    name: str
    version: int
    custom: bool
    count: int  # nodes using this opcode; 0 for an opcode listed but unused


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None
    per_channel: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["shape_signature"] = list(self.shape_signature)
        return out


@dataclass(frozen=True)
class ModelInfo:
    size: int
    sha256: str
    version: int
    description: str
    operators: list[OperatorInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    signatures: list[dict[str, Any]]
    quantization: str
    is_edgetpu: bool
    custom_ops: list[str]
    subgraphs: int = 1
    tensor_dtypes: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "version": self.version,
            "description": self.description,
            "operators": [op.to_dict() for op in self.operators],
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "signatures": [dict(s) for s in self.signatures],
            "quantization": self.quantization,
            "is_edgetpu": self.is_edgetpu,
            "custom_ops": list(self.custom_ops),
            "subgraphs": self.subgraphs,
            "tensor_dtypes": dict(self.tensor_dtypes or {}),
        }
