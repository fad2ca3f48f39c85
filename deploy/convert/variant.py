"""The result of one recipe on one source: what was made, how it did on the host, or why not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runtime.compat import min_runtime
from agent.runtime.modelfile import inspect
from deploy.convert.evaluate import Evaluation

OK, FAILED, UNAVAILABLE = "ok", "failed", "unavailable"


@dataclass(frozen=True)
class VariantResult:
    recipe: str
    kind: str
    status: str  # "ok" | "failed" | "unavailable"
    backend: str | None  # "tf" | "aiq" | "tf+aiq", "+edgetpu_compiler" appended for edgetpu
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    quantization: str | None = None  # agent.runtime.modelfile classification of the output
    inputs: list[dict[str, Any]] = field(default_factory=list)  # name, shape, dtype, scale, zp
    outputs: list[dict[str, Any]] = field(default_factory=list)
    operators: list[dict[str, Any]] = field(default_factory=list)  # name, version, custom, count
    min_runtime: list[dict[str, Any]] = field(default_factory=list)  # runtime, version, ok, ...
    is_edgetpu: bool = False
    conversion_s: float | None = None
    evaluation: Evaluation | None = None
    cached: bool = False
    error: str | None = None
    hint: str | None = None
    operator: str | None = None  # the operator a failure names, when known
    notes: list[str] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. selective: kept_float

    @property
    def ok(self) -> bool:
        return self.status == OK

    def runs_on(self) -> list[str]:
        """``runtime version`` labels of the known runtimes that can load this variant."""
        return [f"{r['runtime']} {r['version']}" for r in self.min_runtime if r.get("ok")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "kind": self.kind,
            "status": self.status,
            "backend": self.backend,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "quantization": self.quantization,
            "inputs": [dict(x) for x in self.inputs],
            "outputs": [dict(x) for x in self.outputs],
            "operators": [dict(x) for x in self.operators],
            "min_runtime": [dict(x) for x in self.min_runtime],
            "is_edgetpu": self.is_edgetpu,
            "conversion_s": self.conversion_s,
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "cached": self.cached,
            "error": self.error,
            "hint": self.hint,
            "operator": self.operator,
            "notes": list(self.notes),
            "tools": dict(self.tools),
            "details": dict(self.details),
        }


def describe(path: Path) -> dict[str, Any]:
    """The model-file fields of a VariantResult for the .tflite at ``path``."""
    info = inspect(path)
    tensors = [
        [
            {
                "name": t.name,
                "shape": list(t.shape_signature or t.shape),
                "dtype": t.dtype,
                "scale": t.scale,
                "zero_point": t.zero_point,
            }
            for t in group
        ]
        for group in (info.inputs, info.outputs)
    ]
    return {
        "path": str(path),
        "size": info.size,
        "sha256": info.sha256,
        "quantization": info.quantization,
        "inputs": tensors[0],
        "outputs": tensors[1],
        "operators": [
            {"name": op.name, "version": op.version, "custom": op.custom, "count": op.count}
            for op in info.operators
        ],
        "min_runtime": min_runtime(info, "edgetpu" if info.is_edgetpu else "cpu"),
        "is_edgetpu": info.is_edgetpu,
    }
