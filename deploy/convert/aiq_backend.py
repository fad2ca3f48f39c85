"""The ai-edge-quantizer backend: a float .tflite in, a quantized .tflite out (no TensorFlow).

Recipe kinds map to ai-edge-quantizer 0.10 recipes:

| kind | ai-edge-quantizer |
|---|---|
| fp16 | ``add_weight_only_config(".*", "*", 16, algorithm_key=FLOAT_CASTING)`` |
| dynamic-int8 | ``recipe.dynamic_wi8_afp32()`` |
| int8, edgetpu | ``recipe.static_wi8_ai8()`` (int8 input and output) |
| int16x8 | ``recipe.static_wi8_ai16()`` (int16 input and output) |
| selective | ``static_wi8_ai8()`` + ``NO_QUANTIZE`` for the most sensitive operators |

A recipe option ``aiq_recipe`` (an ai-edge-quantizer recipe list) replaces the mapping.

Calibration and validation go through a SignatureDef; a model without one gets a default
``serving_default`` signature first (``flatbuffer.ensure_signature``), and the quantized model
keeps it.

**Selective method.** Quantize everything int8, run ai-edge-quantizer's own validator
(``Quantizer.validate``, per-tensor SNR of the quantized model against the float one on the
calibration samples), and score every operator by the SNR it *loses*: SNR of its activation
inputs minus SNR of its output (in dB), so error accumulated upstream is not blamed on the
operators that merely pass it on. The ``keep_float`` highest-scoring operators (at least
``keep_float_fraction`` of all) get a ``NO_QUANTIZE`` rule on their output tensor name and the
model is quantized again; ai-edge-quantizer inserts the DEQUANTIZE/QUANTIZE pairs around them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import EdgeloopError
from deploy.convert.data import Dataset
from deploy.convert.flatbuffer import ensure_signature, graph_ops
from deploy.convert.recipes import Recipe

log = logging.getLogger(__name__)

CALIBRATION_THREADS = 2
SENSITIVITY_SAMPLES = 32


@dataclass(frozen=True)
class AiqOutput:
    model: bytes
    notes: list[str] = field(default_factory=list)
    kept_float: list[dict[str, Any]] = field(default_factory=list)


def available() -> str | None:
    """None when ai-edge-quantizer imports, else the reason it does not."""
    try:
        import ai_edge_quantizer.quantizer  # noqa: F401
    except Exception as exc:  # ImportError and native load errors alike
        return f"ai-edge-quantizer is not usable: {type(exc).__name__}: {exc}"
    return None


def version() -> str | None:
    try:
        return importlib.metadata.version("ai-edge-quantizer")
    except importlib.metadata.PackageNotFoundError:
        return None


def _signature(model: bytes) -> tuple[str, list[str]]:
    """(signature key, signature input names in subgraph-input order)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    key = next(iter(interp.get_signature_list()))
    runner_inputs = interp.get_signature_runner(key).get_input_details()
    by_index = {int(d["index"]): name for name, d in runner_inputs.items()}
    order = [int(d["index"]) for d in interp.get_input_details()]
    return key, [by_index[i] for i in order if i in by_index]


def _samples(data: Dataset, names: list[str], limit: int | None = None) -> list[dict[str, Any]]:
    n = len(data) if limit is None else min(limit, len(data))
    return [
        {name: arr[i : i + 1] for name, arr in zip(names, data.arrays, strict=True)}
        for i in range(n)
    ]


def _quantizer(model: bytes, rules: Any) -> Any:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(bytearray(model))
    q.load_quantization_recipe(rules)
    return q


def _rules(recipe: Recipe) -> Any:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import recipe as aiq_recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    custom = recipe.options.get("aiq_recipe")
    if custom:
        return custom
    if recipe.kind == "fp16":
        manager = RecipeManager()
        manager.add_weight_only_config(
            ".*",
            qtyping.TFLOperationName.ALL_SUPPORTED,
            16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        return manager.get_quantization_recipe()
    if recipe.kind == "dynamic-int8":
        return aiq_recipe.dynamic_wi8_afp32()
    if recipe.kind == "int16x8":
        return aiq_recipe.static_wi8_ai16()
    if recipe.io != "int8":
        raise EdgeloopError(
            f"recipe {recipe.name}: ai-edge-quantizer makes int8 input/output only, "
            f"not {recipe.io}",
            hint="use --backend tf for uint8 or float I/O",
            code="conversion",
        )
    return aiq_recipe.static_wi8_ai8()


def quantize(
    float_model: bytes,
    recipe: Recipe,
    calibration: Dataset | None,
    *,
    say: Callable[[str], None] = log.info,
) -> AiqOutput:
    """Quantize ``float_model`` as ``recipe``; raises EdgeloopError(code="conversion")."""
    model, added = ensure_signature(float_model)
    notes = ["added a default serving_default signature (the source had none)"] if added else []
    if recipe.kind == "fp32":
        return AiqOutput(model, notes)
    rules = _rules(recipe)
    q = _quantizer(model, rules)
    calib = None
    samples: list[dict[str, Any]] = []
    key = ""
    if q.need_calibration:
        if calibration is None or len(calibration) == 0:
            raise EdgeloopError(
                f"recipe {recipe.name} needs calibration data",
                hint="pass --calibration DATA (npz, .npy folder or image folder)",
                code="conversion",
            )
        key, names = _signature(model)
        samples = _samples(calibration, names)
        say(f"calibrating on {len(samples)} samples (signature {key})")
        calib = q.calibrate({key: samples}, num_threads=CALIBRATION_THREADS)
    result = q.quantize(calib, enable_progress_report=False)
    out = bytes(result.quantized_model)
    if recipe.kind != "selective":
        return AiqOutput(out, notes)
    scores = sensitivity(q, model, key, samples[:SENSITIVITY_SAMPLES])
    keep = _keep_count(recipe, len(scores))
    chosen = [s for s in scores if s["loss_db"] > 0][:keep]
    say(
        f"keeping {len(chosen)} most sensitive operators in float: "
        + ", ".join(f"{s['op']}#{s['index']} ({s['loss_db']:.1f} dB)" for s in chosen)
    )
    out = _requantize_without(model, rules, chosen, key, samples)
    return AiqOutput(out, notes, chosen)


def _keep_count(recipe: Recipe, n_ops: int) -> int:
    k = int(recipe.options.get("keep_float", 2))
    frac = float(recipe.options.get("keep_float_fraction", 0.0))
    return max(0, min(n_ops - 1, max(k, math.ceil(frac * n_ops))))


def _db(linear: float) -> float:
    if not math.isfinite(linear):
        return 200.0
    return 10.0 * math.log10(max(linear, 1e-20))


def sensitivity(
    q: Any, model: bytes, key: str, samples: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per-operator SNR loss (dB) of the all-int8 model, most sensitive first."""
    from ai_edge_quantizer.quantizer import ValidationErrorMetric

    result = q.validate({key: samples}, error_metrics=[ValidationErrorMetric.SNR], num_threads=2)
    snr = {name: float(v["snr"]) for name, v in result.get_all_tensor_results().items()}
    scores: list[dict[str, Any]] = []
    for op in graph_ops(model):
        out_snr = [snr[t] for t in op.outputs if t in snr]
        if not out_snr:
            continue
        in_snr = [snr[t] for t in op.inputs if t in snr]
        upstream = _db(min(in_snr)) if in_snr else 200.0
        loss = min(upstream, 200.0) - min(_db(min(out_snr)), 200.0)
        scores.append(
            {"index": op.index, "op": op.name, "tensor": op.outputs[0], "loss_db": round(loss, 3)}
        )
    scores.sort(key=lambda s: float(s["loss_db"]), reverse=True)
    return scores


def _requantize_without(
    model: bytes, rules: Any, chosen: list[dict[str, Any]], key: str, samples: list[dict[str, Any]]
) -> bytes:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = _quantizer(model, rules)
    for entry in chosen:
        q.update_quantization_recipe(
            f"^{re.escape(entry['tensor'])};",
            qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )
    calib = q.calibrate({key: samples}, num_threads=CALIBRATION_THREADS)
    return bytes(q.quantize(calib, enable_progress_report=False).quantized_model)


def error_operator(exc: BaseException) -> str | None:
    """The operator an ai-edge-quantizer error names, when it names one."""
    text = str(exc)
    match = re.search(r"\b(?:op|operation|operator)[:\s]+'?([A-Z][A-Z0-9_]{2,})'?", text)
    if match:
        return match.group(1)
    match = re.search(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", text)
    return match.group(1) if match else None
