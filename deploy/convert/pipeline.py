"""Source + recipes -> variants on disk, each evaluated on the host, cached by content.

``Converter`` holds one source, its float reference, the data and the cache; ``convert`` and
``convert_all`` are the one-call forms. A recipe that fails becomes a ``VariantResult`` with
status "failed" (recipe, operator when known, reason) and the other recipes go on; an
``edgetpu`` recipe without a compiler is "unavailable" with the reason.

Backends (``backend=``): ``auto`` picks TensorFlow for a Keras/SavedModel source and
ai-edge-quantizer for a float .tflite; ``aiq`` on a Keras/SavedModel source converts to float
with TensorFlow and quantizes that with ai-edge-quantizer (``tf+aiq``); ``tf`` needs a
Keras/SavedModel source. ``selective`` always goes through ai-edge-quantizer.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, EdgeloopError
from agent.runtime.modelfile import inspect
from deploy.convert import aiq_backend, edgetpu, qat, tf_backend
from deploy.convert.cache import VariantCache, file_digest, key_of
from deploy.convert.data import Dataset, input_specs, load_data
from deploy.convert.evaluate import Evaluation, Outputs, evaluate
from deploy.convert.progress import Progress
from deploy.convert.recipes import Recipe, get_recipe, resolve
from deploy.convert.variant import FAILED, OK, UNAVAILABLE, VariantResult, describe

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tf", "aiq")
BACKEND_CALLS: Counter[str] = Counter()  # conversions actually run, per backend (not cache hits)
DataArg = str | Path | Dataset | None


class Converter:
    def __init__(
        self,
        source: str | Path,
        *,
        calibration: DataArg = None,
        validation: DataArg = None,
        train: DataArg = None,
        backend: str = "auto",
        cache: VariantCache | bool = True,
        progress: Progress | None = None,
        recipes_file: str | Path | None = None,
        image_range: str = "0,1",
    ) -> None:
        self.source = Path(source)
        if not self.source.exists():
            raise ConfigError(f"source model not found: {self.source}", hint="check the path")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}", hint=f"use one of {BACKENDS}")
        self.is_tflite = self.source.suffix == ".tflite"
        if not self.is_tflite and not tf_backend.is_tf_source(self.source):
            raise ConfigError(
                f"{self.source}: not a .tflite, Keras (.keras/.h5) or SavedModel directory",
                hint="give a float .tflite, a Keras file or a SavedModel",
            )
        if self.is_tflite and backend == "tf":
            raise ConfigError(
                "backend tf needs a Keras or SavedModel source, not a .tflite",
                hint="use backend aiq (or auto) for a float .tflite",
            )
        self.backend = backend
        self.cache = cache if isinstance(cache, VariantCache) else VariantCache() if cache else None
        self.progress = progress or Progress(None)
        self.recipes_file = recipes_file
        self.image_range = image_range
        self._args = {"calibration": calibration, "validation": validation, "train": train}
        self._digest = file_digest(self.source)
        self._reference: bytes | None = None
        self._data: dict[str, Dataset | None] = {}
        self._reference_outputs: dict[str, Outputs] = {}

    # -- the float reference and the data -------------------------------------------------

    def reference(self) -> bytes:
        """The float .tflite every variant is compared with (the source, or TF's fp32)."""
        if self._reference is None:
            if self.is_tflite:
                blob = self.source.read_bytes()
                info = inspect(blob)
                if info.quantization not in ("fp32", "fp16"):
                    raise ConfigError(
                        f"{self.source} is already quantized ({info.quantization})",
                        hint="give the float model as the source",
                    )
                self._reference = blob
            else:
                self._reference = self._bytes(get_recipe("fp32", self.recipes_file), "tf")[0]
        return self._reference

    def data(self, role: str) -> Dataset | None:
        if role not in self._data:
            arg = self._args[role]
            if arg is None or isinstance(arg, Dataset):
                self._data[role] = arg
            else:
                specs = input_specs(inspect(self.reference()))
                self._data[role] = load_data(arg, specs, role, image_range=self.image_range)
                self.progress.say(
                    f"{role} data: {self._data[role].to_dict()['source']}, "  # type: ignore[union-attr]
                    f"{len(self._data[role] or ())} samples"
                )
        return self._data[role]

    # -- conversion ------------------------------------------------------------------------

    def _resolve_backend(self, recipe: Recipe) -> str:
        if recipe.kind == "qat":
            return "tf+tfmot"
        if self.is_tflite:
            return "aiq"
        if recipe.kind == "fp32":
            return "tf"
        if recipe.kind == "selective" or self.backend == "aiq":
            return "tf+aiq"
        return "tf"

    def _tools(self, backend: str) -> dict[str, str]:
        tools = {}
        if "tf" in backend.split("+"):
            tools["tensorflow"] = tf_backend.version() or "absent"
        if "aiq" in backend.split("+"):
            tools["ai-edge-quantizer"] = aiq_backend.version() or "absent"
        if "tfmot" in backend.split("+"):
            tools["tensorflow-model-optimization"] = qat.version() or "absent"
        return tools

    def _bytes(self, recipe: Recipe, backend: str) -> tuple[bytes, dict[str, Any], bool]:
        """(model, meta, cached) for ``recipe`` by ``backend`` (no Edge TPU step)."""
        calib = self.data("calibration") if recipe.calibration else None
        train = self.data("train") if recipe.kind == "qat" else None
        tools = self._tools(backend)
        key = key_of(
            source=self._digest,
            recipe=recipe.fingerprint(),
            backend=backend,
            calibration=calib.fingerprint if calib is not None else None,
            tools=tools,
            **({"train": train.fingerprint if train is not None else None} if train else {}),
        )
        hit = self.cache.get_model(key) if self.cache is not None else None
        if hit is not None:
            return hit[0], hit[1], True
        say = self.progress.scoped(recipe.name)
        say(f"converting with {backend}")
        start = time.perf_counter()
        BACKEND_CALLS[backend] += 1
        meta: dict[str, Any] = {"notes": [], "details": {}}
        if backend == "tf+tfmot":
            if self.is_tflite:
                raise EdgeloopError(
                    f"recipe {recipe.name} trains a Keras model, not a .tflite",
                    hint="give the Keras source (.keras, .h5 or SavedModel)",
                    code="unavailable",
                )
            model = qat.convert(self.source, recipe, calib, train, say=say)
        elif backend == "tf":
            model = tf_backend.convert(self.source, recipe, calib, say=say)
        else:
            float_model = self.source.read_bytes() if self.is_tflite else self.reference()
            out = aiq_backend.quantize(float_model, recipe, calib, say=say)
            model = out.model
            meta["notes"] = out.notes
            if out.kept_float:
                meta["details"] = {"kept_float": out.kept_float}
        meta.update(conversion_s=round(time.perf_counter() - start, 3), tools=tools)
        if self.cache is not None:
            self.cache.put_model(key, model, meta)
        return model, meta, False

    def _edgetpu(self, recipe: Recipe, backend: str) -> tuple[bytes, dict[str, Any], bool]:
        compiler = edgetpu.find_compiler()
        if compiler is None:
            raise EdgeloopError(
                str(edgetpu.unavailable_reason()), hint=edgetpu.INSTALL_HINT, code="unavailable"
            )
        int8 = Recipe(f"{recipe.name}/int8", "int8", calibration=True, io=recipe.io)
        model, meta, _ = self._bytes(int8, backend)
        version = edgetpu.compiler_version(compiler) or "unknown"
        int8_sha = hashlib.sha256(model).hexdigest()
        key = key_of(int8=int8_sha, recipe=recipe.fingerprint(), compiler=version)
        hit = self.cache.get_model(key) if self.cache is not None else None
        if hit is not None:
            return hit[0], hit[1], True
        args = [str(a) for a in recipe.options.get("compiler_args", ["-s"])]
        start = time.perf_counter()
        BACKEND_CALLS["edgetpu_compiler"] += 1
        with tempfile.TemporaryDirectory(prefix="edgeloop-edgetpu-") as work:
            out = edgetpu.compile_model(model, Path(work), args)
        elapsed = time.perf_counter() - start
        meta = {
            "conversion_s": round(float(meta.get("conversion_s", 0.0)) + elapsed, 3),
            "tools": {**meta.get("tools", {}), "edgetpu_compiler": version},
            "notes": [f"compiled with: {' '.join(out.command[:-1])} MODEL"],
            "details": {"compiler_log": out.log[-2000:], "int8_sha256": int8_sha},
        }
        if self.cache is not None:
            self.cache.put_model(key, out.model, meta)
        return out.model, meta, False

    def convert(self, recipe: str | Recipe, out: str | Path) -> VariantResult:
        """Make ``recipe`` into the file ``out`` and evaluate it; never raises for the recipe's
        own failure (see VariantResult.status)."""
        rec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe, self.recipes_file)
        backend = self._resolve_backend(rec)
        label = backend + ("+edgetpu_compiler" if rec.kind == "edgetpu" else "")
        try:
            if rec.kind == "edgetpu":
                model, meta, cached = self._edgetpu(rec, backend)
            else:
                model, meta, cached = self._bytes(rec, backend)
        except EdgeloopError as exc:
            status = UNAVAILABLE if exc.code == "unavailable" else FAILED
            return self._failure(rec, label, status, exc.message, exc.hint, None)
        except Exception as exc:  # converters raise anything: ConverterError, ValueError, ...
            op = (tf_backend if backend == "tf" else aiq_backend).error_operator(exc)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:1500]
            return self._failure(rec, label, FAILED, reason, None, op)
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model)
        result = VariantResult(
            recipe=rec.name,
            kind=rec.kind,
            status=OK,
            backend=label,
            conversion_s=meta.get("conversion_s"),
            cached=cached,
            notes=list(meta.get("notes", [])),
            tools=dict(meta.get("tools", {})),
            details=dict(meta.get("details", {})),
            **describe(path),
        )
        return self._evaluated(result, path)

    def _failure(
        self, rec: Recipe, backend: str, status: str, reason: str, hint: str | None, op: str | None
    ) -> VariantResult:
        where = f" at operator {op}" if op else ""
        reason = reason.removeprefix(f"recipe {rec.name}: ")
        message = f"recipe {rec.name} ({backend}){where}: {reason}"
        log.warning("%s", message)
        self.progress.say(f"{rec.name}: {status}: {reason}")
        return VariantResult(
            rec.name, rec.kind, status, backend, error=message, hint=hint, operator=op
        )

    # -- evaluation ------------------------------------------------------------------------

    def _evaluated(self, result: VariantResult, path: Path) -> VariantResult:
        data = self.data("validation") or self.data("calibration")
        if data is None:
            return replace(result, notes=[*result.notes, "not evaluated: no validation data"])
        target = path
        notes = list(result.notes)
        if result.is_edgetpu:
            notes.append(
                "host metrics are those of the int8 model given to the compiler "
                "(an Edge TPU-compiled model does not run on the host CPU)"
            )
            int8 = Recipe(
                f"{result.recipe}/int8",
                "int8",
                calibration=True,
                io=get_recipe(result.recipe, self.recipes_file).io,
            )
            target = path.with_suffix(".int8.tflite")
            target.write_bytes(self._bytes(int8, self._resolve_backend(int8))[0])
        try:
            evaluation = self._evaluation(target, data)
        except Exception as exc:  # a variant the host runtime cannot run is reported, not fatal
            notes.append(f"not evaluated on the host: {type(exc).__name__}: {exc}")
            return replace(result, notes=notes)
        finally:
            if target != path:
                target.unlink(missing_ok=True)
        return replace(result, evaluation=evaluation, notes=notes)

    def _evaluation(self, model: Path, data: Dataset) -> Evaluation:
        sha = file_digest(model)
        ref_sha = hashlib.sha256(self.reference()).hexdigest()
        from agent.runtime import get_backend

        rt = get_backend()
        key = key_of(
            variant=sha, reference=ref_sha, data=data.fingerprint, runtime=f"{rt.name} {rt.version}"
        )
        hit = self.cache.get_eval(key) if self.cache is not None else None
        if hit is not None:
            return Evaluation(**hit)
        reference = self._reference_outputs.get(data.fingerprint)
        if reference is None:
            with tempfile.NamedTemporaryFile(suffix=".tflite") as tmp:
                tmp.write(self.reference())
                tmp.flush()
                self.progress.say(f"evaluating the float reference on {len(data)} samples")
                reference = evaluate(tmp.name, data)[1]
            self._reference_outputs[data.fingerprint] = reference
        self.progress.say(f"{model.name}: evaluating on {len(data)} samples")
        counter = self.progress.counter("  samples", len(data))
        evaluation, _ = evaluate(model, data, reference, on_sample=counter)
        if self.cache is not None:
            self.cache.put_eval(key, evaluation.to_dict())
        return evaluation

    def convert_all(
        self, recipes: Sequence[str | Recipe] | str, out_dir: str | Path
    ) -> list[VariantResult]:
        """Every recipe into ``out_dir/<source stem>_<recipe>.tflite``; failures do not stop."""
        chosen = (
            resolve(recipes, self.recipes_file)
            if isinstance(recipes, str)
            else [r if isinstance(r, Recipe) else get_recipe(r, self.recipes_file) for r in recipes]
        )
        directory = Path(out_dir)
        results = []
        for rec in chosen:
            results.append(self.convert(rec, directory / f"{self.source.stem}_{rec.name}.tflite"))
        return results


def convert(
    source: str | Path,
    recipe: str | Recipe,
    out: str | Path,
    calibration: DataArg = None,
    validation: DataArg = None,
    **options: Any,
) -> VariantResult:
    """One variant of ``source`` into the file ``out`` (options: see ``Converter``)."""
    return Converter(source, calibration=calibration, validation=validation, **options).convert(
        recipe, out
    )


def convert_all(
    source: str | Path,
    out_dir: str | Path,
    recipes: Sequence[str | Recipe] | str = "all",
    calibration: DataArg = None,
    validation: DataArg = None,
    **options: Any,
) -> list[VariantResult]:
    """Every recipe (default: all) of ``source`` into ``out_dir``; failures do not stop."""
    conv = Converter(source, calibration=calibration, validation=validation, **options)
    return conv.convert_all(recipes, out_dir)
