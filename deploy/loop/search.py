"""Mixed precision searched, not fixed: the least float that fits the accuracy budget.

When full int8 misses the accuracy budget, :func:`search_selective` makes new selective
candidates on demand: ``selective-k<k>`` keeps the ``k`` operators that lose the most SNR on the
host data (ai-edge-quantizer's validator, measured per operator; see docs/convert.md) in float
and quantizes the rest to int8. ``k`` goes up from 1, so the first variant within the budget is
the one with the least float; the search stops there, at ``max_k``, or when its host-time bound
is spent. Every attempt is kept with its accuracy drop, size and host seconds, so a report can
show why each failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.wire.record import Record
from deploy.convert import Converter
from deploy.convert.recipes import Recipe
from deploy.convert.variant import VariantResult


@dataclass(frozen=True)
class Attempt(Record):
    k: int
    recipe: str
    ok: bool
    accuracy: float | None
    drop_points: float | None
    size: int | None
    host_s: float
    why: str  # "fits" or the reason it does not


@dataclass
class SearchResult:
    budget_points: float
    float_accuracy: float
    attempts: list[Attempt] = field(default_factory=list)
    chosen: VariantResult | None = None
    stopped: str = ""
    results: list[VariantResult] = field(default_factory=list)  # every attempt's variant

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_points": self.budget_points,
            "float_accuracy": self.float_accuracy,
            "attempts": [a.to_dict() for a in self.attempts],
            "chosen": self.chosen.recipe if self.chosen else None,
            "stopped": self.stopped,
        }


def selective_recipe(k: int) -> Recipe:
    return Recipe(
        f"selective-k{k}",
        "selective",
        f"full int8 except the {k} operator(s) most sensitive on host data, kept in float",
        calibration=True,
        io="int8",
        options={"keep_float": k, "keep_float_fraction": 0.0},
    )


def search_selective(
    conv: Converter,
    out_dir: Path,
    float_accuracy: float,
    budget_points: float,
    *,
    max_k: int = 8,
    max_host_s: float = 300.0,
    say: Callable[[str], None] = lambda _: None,
) -> SearchResult:
    """Try k = 1, 2, ... operators kept in float until one is within ``budget_points``."""
    result = SearchResult(budget_points, float_accuracy)
    start = time.monotonic()
    for k in range(1, max_k + 1):
        if time.monotonic() - start > max_host_s:
            result.stopped = f"host time bound {max_host_s:g} s spent before k={k}"
            break
        recipe = selective_recipe(k)
        t0 = time.monotonic()
        r = conv.convert(recipe, out_dir / f"{conv.source.stem}_{recipe.name}.tflite")
        result.results.append(r)
        acc = r.evaluation.accuracy if r.ok and r.evaluation else None
        drop = None if acc is None else round((float_accuracy - acc) * 100, 2)
        if not r.ok:
            why = f"{r.status}: {r.error}"
        elif drop is None:
            why = "no host accuracy (validation data without labels)"
        elif drop > budget_points:
            why = f"loses {drop:.2f} points > budget {budget_points:g}"
        else:
            why = "fits"
        result.attempts.append(
            Attempt(k, recipe.name, r.ok, acc, drop, r.size, round(time.monotonic() - t0, 2), why)
        )
        say(f"selective search: k={k}: {why}")
        if why == "fits":
            result.chosen = r
            result.stopped = f"k={k} is the least float within the budget"
            break
        if not r.ok:
            result.stopped = f"k={k} failed to convert"
            break
    else:
        result.stopped = f"no k up to {max_k} fits the budget"
    return result
