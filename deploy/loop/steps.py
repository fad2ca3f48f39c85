"""The search space beyond the converted menu, as data: which generation steps remain for a
class, in the order a practitioner follows, and what each is predicted to give (pure, no I/O).

The order (docs/loop.md, "Re-quantizing"):

1. **cheap PTQ**: the recipes converted up front (seconds of host time); they are the candidates
   the optimizer starts from and are not a step here;
2. ``selective-search``: keep the k most sensitive operators in float, k = 1, 2, ... until one
   fits the accuracy budget (a few seconds per k; deploy/loop/search.py);
3. ``qat``: quantization-aware training, then full int8 (tens of seconds to minutes; needs a
   Keras source and labelled training data).

A step is *open* for a class when full-int8 PTQ failed the accuracy budget (an int8 variant was
excluded by the accuracy gate, or there is no int8 variant at all: when int8 is within the
budget it is the fast variant already, and both steps can only be as fast), the step is
available (the driver says why not otherwise) and no variant of its family exists yet (a step
is tried once per model: its variants, good or bad, are in the registry and so among the
candidates or the exclusions). The driver (deploy.loop.driver) describes the steps it can run
(:class:`Step`, with its predicted host cost); the optimizer picks one when the candidates it
has cannot meet the targets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.wire.record import Record

ORDER = ("ptq", "selective-search", "qat")
INT8_RECIPES = ("int8", "int8-uint8io")
_SEARCHED = re.compile(r"^selective-k\d+$")


def recipe_family(recipe: str) -> str:
    """The recipe whose priors a generated recipe shares: ``selective-k3`` -> ``selective``."""
    return "selective" if _SEARCHED.match(recipe) else recipe


@dataclass(frozen=True)
class Step(Record):
    """One generation step the driver can run for a model."""

    name: str  # one of ORDER[1:]
    family: str  # recipe-name prefix of the variants it makes ("selective-k", "qat")
    predict_as: str  # the recipe whose ratios predict its device metrics
    host_cost_s: float  # predicted host seconds (what the driver expects it to take)
    host_bound_s: float  # the bound it runs under
    size_mb: float | None = None  # predicted file size (the int8 variant's), when known
    available: bool = True
    why_not: str = ""  # when not available: what is missing and how to provide it
    what: str = ""  # one line for the decision's reason

    def made(self, recipe: str) -> bool:
        """True when ``recipe`` is a variant this step produces."""
        if self.family.endswith("-k"):
            return recipe.startswith(self.family) and recipe[len(self.family) :].isdigit()
        return recipe == self.family


def int8_fails_budget(excluded: Iterable[tuple[str, str]], recipes: Iterable[str]) -> bool:
    """``excluded``: (recipe, gate) pairs. True when an int8 PTQ variant failed the accuracy
    budget, or when no int8 variant was made at all."""
    excluded = list(excluded)
    if any(r in INT8_RECIPES and gate == "accuracy" for r, gate in excluded):
        return True
    return not any(r in INT8_RECIPES for r in recipes)


def step_status(
    steps: Sequence[Step], recipes: Iterable[str], excluded: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Every step with its state: ``open``, ``tried`` (variants listed), ``unavailable``
    (why) or ``not needed`` (full int8 is within the budget)."""
    names = list(recipes)
    needed = int8_fails_budget(excluded, names)
    out = []
    for s in sorted(steps, key=lambda s: ORDER.index(s.name) if s.name in ORDER else 99):
        made = [r for r in names if s.made(r)]
        if made:
            state, why = "tried", "made " + ", ".join(sorted(made))
        elif not s.available:
            state, why = "unavailable", s.why_not
        elif not needed:
            state, why = "not needed", "full int8 is within the accuracy budget"
        else:
            state, why = "open", f"predicted host cost {s.host_cost_s:.0f} s"
        out.append({"step": s.name, "state": state, "why": why})
    return out


def open_steps(
    steps: Sequence[Step], recipes: Iterable[str], excluded: Iterable[tuple[str, str]]
) -> list[Step]:
    """The steps still to try, in the practitioner's order."""
    status = {d["step"]: d["state"] for d in step_status(steps, recipes, excluded)}
    ordered = sorted(steps, key=lambda s: ORDER.index(s.name) if s.name in ORDER else 99)
    return [s for s in ordered if status.get(s.name) == "open"]
