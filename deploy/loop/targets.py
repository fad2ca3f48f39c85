"""Targets of a model, per hardware class: the contract the closed loop optimizes against.

A TOML file per model::

    model = "digits"                  # optional; checked against the model being optimized

    [targets]                         # defaults for every class
    p95_ms = 8.0                      # device-measured p95 latency
    peak_memory_mb = 300              # device-measured process memory
    mj_per_inference = 5.0            # device-measured energy per inference
    size_mb = 1.0                     # variant file size (known exactly on the host)
    max_accuracy_drop = 1.0           # percentage points vs float, on host data

    [class."rpi4b-cpu"]               # overrides for one class: a hardware class
    p95_ms = 20                       # ("rpi4b-cpu") or a full registry class id
                                      # ("rpi4b-cpu/tflite-runtime"); the full id wins

Every key is optional; an absent target is not checked. Every problem in the file is reported
at once in one ConfigError.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.wire.record import Record

METRICS = ("p95_ms", "peak_memory_mb", "mj_per_inference", "size_mb", "max_accuracy_drop")
UNITS = {
    "p95_ms": "ms",
    "peak_memory_mb": "MB",
    "mj_per_inference": "mJ",
    "size_mb": "MB",
    "max_accuracy_drop": "points",
}
LABELS = {
    "p95_ms": "p95",
    "peak_memory_mb": "peak memory",
    "mj_per_inference": "energy",
    "size_mb": "size",
    "max_accuracy_drop": "accuracy drop",
}
# The measured quantity each target bounds (max_accuracy_drop bounds "accuracy_drop").
MEASURE_OF = {m: m for m in METRICS} | {"max_accuracy_drop": "accuracy_drop"}


@dataclass(frozen=True)
class Violation(Record):
    metric: str  # a METRICS name
    target: float
    measured: float

    def describe(self) -> str:
        unit = UNITS[self.metric]
        return f"{LABELS[self.metric]} {self.measured:.3g} {unit} > target {self.target:.3g} {unit}"


@dataclass(frozen=True)
class ClassTargets:
    """The targets in force for one class (defaults merged with the class's overrides)."""

    class_id: str
    p95_ms: float | None = None
    peak_memory_mb: float | None = None
    mj_per_inference: float | None = None
    size_mb: float | None = None
    max_accuracy_drop: float | None = None
    overridden: tuple[str, ...] = ()  # metrics the class section set

    def get(self, metric: str) -> float | None:
        value = getattr(self, metric)
        assert value is None or isinstance(value, float)
        return value

    def set_metrics(self) -> list[str]:
        return [m for m in METRICS if self.get(m) is not None]

    def check(self, measured: Mapping[str, float | None]) -> list[Violation]:
        """Targets exceeded by ``measured`` (keys: p95_ms, peak_memory_mb, mj_per_inference,
        size_mb, accuracy_drop). A missing/None measurement is not a violation: see
        :meth:`unknown`."""
        out = []
        for metric in METRICS:
            target, value = self.get(metric), measured.get(MEASURE_OF[metric])
            if target is not None and value is not None and value > target:
                out.append(Violation(metric, target, float(value)))
        return out

    def unknown(self, measured: Mapping[str, float | None]) -> list[str]:
        """Metrics with a target but no value in ``measured``."""
        return [m for m in self.set_metrics() if measured.get(MEASURE_OF[m]) is None]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["overridden"] = list(self.overridden)
        return out


@dataclass(frozen=True)
class Targets:
    model: str | None
    defaults: ClassTargets
    classes: dict[str, ClassTargets] = field(default_factory=dict)
    source: str = "<targets>"

    def for_class(self, cls: str) -> ClassTargets:
        """Targets for a registry class id ("rpi4b-cpu/ai-edge-litert") or a hardware class
        ("rpi4b-cpu"): the exact section wins, then the hardware-class section, then defaults."""
        hw = cls.partition("/")[0]
        section = self.classes.get(cls) or self.classes.get(hw)
        if section is None:
            return replace(self.defaults, class_id=cls)
        merged = {
            m: section.get(m) if m in section.overridden else self.defaults.get(m) for m in METRICS
        }
        return ClassTargets(class_id=cls, overridden=section.overridden, **merged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "targets": self.defaults.to_dict(),
            "class": {k: v.to_dict() for k, v in self.classes.items()},
            "source": self.source,
        }


def _section(raw: Any, where: str, errors: list[str]) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: must be a table, got {type(raw).__name__}")
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key not in METRICS:
            errors.append(f"{where}.{key}: unknown target (known: {', '.join(METRICS)})")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{where}.{key}: must be a number, got {value!r}")
        elif not math.isfinite(value) or value < 0 or (value == 0 and key != "max_accuracy_drop"):
            errors.append(f"{where}.{key}: must be a positive number, got {value!r}")
        else:
            out[key] = float(value)
    return out


def parse_targets(data: Mapping[str, Any], source: str = "<targets>") -> Targets:
    """Validate parsed TOML; raises ConfigError listing every problem."""
    errors: list[str] = []
    for key in data:
        if key not in ("model", "targets", "class"):
            errors.append(f'{key}: unknown key (expected model, [targets], [class."<id>"])')
    model = data.get("model")
    if model is not None and not (isinstance(model, str) and model):
        errors.append(f"model: must be a non-empty string, got {model!r}")
    defaults = _section(data.get("targets", {}), "targets", errors)
    classes_raw = data.get("class", {})
    classes: dict[str, ClassTargets] = {}
    if not isinstance(classes_raw, Mapping):
        errors.append('class: must be tables like [class."rpi4b-cpu"]')
    else:
        for cid, raw in classes_raw.items():
            values = _section(raw, f"class.{cid}", errors)
            classes[cid] = ClassTargets(class_id=cid, overridden=tuple(values), **values)
    if errors:
        raise ConfigError(
            f"{source}: {len(errors)} problem(s) in the targets: " + "; ".join(errors),
            hint="fix the file; units are ms, MB, mJ per inference and accuracy points",
        )
    return Targets(
        model=model if isinstance(model, str) else None,
        defaults=ClassTargets(class_id="*", overridden=tuple(defaults), **defaults),
        classes=classes,
        source=source,
    )


def load_targets(path: str | Path) -> Targets:
    """Read and validate a targets TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read targets {p}: {exc}", hint="check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", hint="fix the syntax") from exc
    return parse_targets(data, str(p))


assert {f.name for f in fields(ClassTargets)} >= set(METRICS)
