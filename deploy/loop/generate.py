"""New candidates made on demand, when the optimizer asks for the next step of the search space.

The optimizer (pure) picks a step from :meth:`Generator.steps`; the driver calls
:meth:`Generator.run`, which makes the step's variants with deploy.convert and stores every one
of them in the registry, good or bad: a selective attempt that misses the accuracy budget is
kept (the candidate gates exclude it with its drop), so the step counts as tried after a host
restart too, and an ``infeasible`` decision can show why each failed.

Steps (deploy.loop.steps): ``selective-search`` (deploy.loop.search, k = 1, 2, ... operators
kept in float) and ``qat`` (the ``qat`` recipe: TFMOT fine-tuning on labelled ``train`` data,
then full int8). Predicted host cost: selective ~1.5x the int8 conversion time per k plus the
host evaluation (measured: fusionnet int8 1.3 s, selective-k1 1.5 s), expected k <= 2; QAT:
the recipe's training bound (``max_seconds``) plus one int8 conversion.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deploy.convert import Converter, get_recipe
from deploy.convert.variant import VariantResult
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.loop.candidates import float_accuracy
from deploy.loop.search import search_selective
from deploy.loop.steps import INT8_RECIPES, Step

log = logging.getLogger(__name__)

SELECTIVE_PER_K = 1.5  # x the int8 conversion time, per k (quantize, validate, quantize again)
EVAL_S = 1.0  # host evaluation of one variant, when nothing better is known


def variant_from_result(model: str, r: VariantResult) -> Variant:
    """The registry row of one converted variant (failed and unavailable ones too)."""
    ev = r.evaluation
    return Variant(
        id=f"{r.recipe}-{(r.sha256 or hashlib.sha256(r.recipe.encode()).hexdigest())[:12]}",
        model=model,
        recipe=r.recipe,
        path=r.path or "",
        sha256=r.sha256 or "",
        size=r.size or 0,
        quantization=r.quantization or "unknown",
        accuracy=ev.accuracy if ev else None,
        agreement=ev.agreement if ev else None,
        snr_db=ev.snr_db if ev else None,
        operators=list(r.operators),
        min_runtime=list(r.min_runtime),
        conversion_s=r.conversion_s,
        available=r.ok,
        unavailable_reason=None if r.ok else (r.error or r.status),
    )


@dataclass
class Generated:
    """What one run of a step made, for the loop's log and summary."""

    step: str
    host_s: float
    variants: list[str] = field(default_factory=list)  # variant ids, in the order made
    detail: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "host_s": self.host_s,
            "variants": self.variants,
            "detail": self.detail,
            "note": self.note,
        }


class Generator:
    """Runs the generation steps for one model's source (one at a time)."""

    def __init__(
        self,
        registry: Registry,
        model: str,
        source: Path,
        out_dir: Path,
        *,
        calibration: Path | None = None,
        validation: Path | None = None,
        train: Path | None = None,
        backend: str = "auto",
        max_k: int = 8,
        max_host_s: float = 300.0,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.registry, self.model = registry, model
        self.source, self.out_dir = Path(source), Path(out_dir)
        self.calibration, self.validation, self.train = calibration, validation, train
        self.backend, self.max_k, self.max_host_s, self.say = backend, max_k, max_host_s, say
        self.ran: dict[str, Generated] = {}  # step name -> its outcome in this process
        self._lock = threading.Lock()
        self._conv: Converter | None = None

    def converter(self) -> Converter:
        if self._conv is None:
            self._conv = Converter(
                self.source,
                calibration=self.calibration,
                validation=self.validation,
                train=self.train,
                backend=self.backend,
            )
        return self._conv

    # ---- what can be run, with its predicted cost ----------------------------------------------
    def steps(self, variants: Sequence[Variant]) -> tuple[Step, ...]:
        int8 = next((v for v in variants if v.recipe in INT8_RECIPES and v.available), None)
        int8_s = (int8.conversion_s or 1.0) if int8 else 1.0
        size = int8.size_mb if int8 else None
        per_k = SELECTIVE_PER_K * int8_s + EVAL_S
        labelled = float_accuracy(variants, {}) is not None
        sel_why = self._missing(
            ("ai-edge-quantizer", _has_aiq()),
            ("calibration data (--calibration)", self.calibration is not None),
            ("labelled validation data (--validation with labels)", labelled),
        )
        qat_recipe = get_recipe("qat")
        train_s = float(qat_recipe.options.get("max_seconds", 120))
        qat_why = self._missing(
            ("a Keras source (.keras, .h5, SavedModel)", self.source.suffix != ".tflite"),
            ("labelled training data (--train)", self.train is not None),
            ("tensorflow-model-optimization (the qat extra)", _has_tfmot()),
        )
        steps = (
            Step(
                "selective-search",
                "selective-k",
                "selective",
                host_cost_s=round(2 * per_k, 1),
                host_bound_s=self.max_host_s,
                size_mb=size,
                available=not sel_why,
                why_not=sel_why,
                what=f"keep the k most sensitive operators in float, k = 1..{self.max_k}, "
                f"~{per_k:.1f} s per k",
            ),
            Step(
                "qat",
                "qat",
                "int8",
                host_cost_s=round(train_s + int8_s + EVAL_S, 1),
                host_bound_s=round(1.5 * train_s + int8_s + EVAL_S, 1),
                size_mb=size,
                available=not qat_why,
                why_not=qat_why,
                what=f"quantization-aware training, {qat_recipe.options.get('epochs')} epoch(s) "
                f"bounded by {train_s:g} s, then full int8",
            ),
        )
        return tuple(self._ran_already(s) for s in steps)

    @staticmethod
    def _missing(*needs: tuple[str, bool]) -> str:
        lacking = [what for what, ok in needs if not ok]
        return ("needs " + ", ".join(lacking)) if lacking else ""

    def _ran_already(self, step: Step) -> Step:
        done = self.ran.get(step.name)
        if done is None or not step.available:
            return step
        note = done.note or "made no variant"
        return replace(step, available=False, why_not=f"ran already in this loop: {note}")

    # ---- running one -----------------------------------------------------------------------------
    def run(self, step: str, budget_points: float | None) -> Generated:
        """Make ``step``'s variants and store them in the registry (never raises for a failed
        conversion: it is stored as an unavailable variant)."""
        with self._lock:
            t0 = time.monotonic()
            try:
                if step == "selective-search":
                    out = self._selective(budget_points)
                elif step == "qat":
                    out = self._qat()
                else:
                    out = Generated(step, 0.0, note=f"unknown generation step {step!r}")
            except Exception as exc:  # bad data, a converter crash: the step is spent, said why
                log.warning("generation step %s failed", step, exc_info=True)
                out = Generated(step, 0.0, note=f"failed: {type(exc).__name__}: {exc}")
            out.host_s = round(time.monotonic() - t0, 2)
            self.ran[step] = out
            self.say(f"generated by {step} in {out.host_s:.1f} s: {out.note}")
            return out

    def _store(self, results: Sequence[VariantResult], out: Generated) -> None:
        for r in results:
            v = variant_from_result(self.model, r)
            self.registry.add_variant(v)
            out.variants.append(v.id)

    def _selective(self, budget_points: float | None) -> Generated:
        conv = self.converter()
        facc = float_accuracy(self.registry.variants_for(self.model), {})
        out = Generated("selective-search", 0.0)
        if facc is None:
            out.note = "no float host accuracy: cannot judge k against the budget"
            return out
        found = search_selective(
            conv,
            self.out_dir,
            facc,
            1.0 if budget_points is None else budget_points,
            max_k=self.max_k,
            max_host_s=self.max_host_s,
            say=self.say,
        )
        self._store(found.results, out)
        out.detail = found.to_dict()
        out.note = found.stopped
        return out

    def _qat(self) -> Generated:
        conv = self.converter()
        r = conv.convert(get_recipe("qat"), self.out_dir / f"{self.source.stem}_qat.tflite")
        out = Generated("qat", 0.0)
        self._store([r], out)
        acc = r.evaluation.accuracy if r.ok and r.evaluation else None
        out.detail = {"status": r.status, "accuracy": acc, "conversion_s": r.conversion_s}
        out.note = f"qat {r.status}" + (f", host accuracy {acc:.4f}" if acc is not None else "")
        if not r.ok:
            out.note += f": {r.error}"
        return out


def _has_aiq() -> bool:
    from deploy.convert import aiq_backend

    return aiq_backend.version() is not None


def _has_tfmot() -> bool:
    from deploy.convert import qat

    return qat.version() is not None
