"""Conversion recipes as data: ``deploy/data/recipes.json`` plus named lookups.

A recipe says *what* variant to make (kind, I/O type, whether it needs calibration data,
options); the backends (``tf_backend``, ``aiq_backend``) say *how*. Its ``fingerprint()`` is
part of the variant cache key, so editing a recipe invalidates exactly its own variants.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

RECIPES_FILE = Path(__file__).resolve().parents[1] / "data" / "recipes.json"
KINDS = ("fp32", "fp16", "dynamic-int8", "int8", "int16x8", "selective", "edgetpu", "qat")
IO_TYPES = ("float32", "int8", "uint8")
ALL = "all"


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str
    description: str = ""
    calibration: bool = False
    io: str = "float32"
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "calibration": self.calibration,
            "io": self.io,
            "options": dict(self.options),
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON definition (the description does not count)."""
        body = self.to_dict()
        body.pop("description")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "recipe") -> Recipe:
        problems = []
        name = raw.get("name")
        kind = raw.get("kind")
        io = raw.get("io", "float32")
        options = raw.get("options", {})
        if not isinstance(name, str) or not name:
            problems.append("'name' must be a non-empty string")
        if kind not in KINDS:
            problems.append(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if io not in IO_TYPES:
            problems.append(f"'io' must be one of {', '.join(IO_TYPES)}, got {io!r}")
        if not isinstance(options, Mapping):
            problems.append("'options' must be an object")
        if problems:
            raise ConfigError(
                f"{where}: invalid recipe {name!r}: " + "; ".join(problems),
                hint=f"see {RECIPES_FILE} for the format",
            )
        return cls(
            name=str(name),
            kind=str(kind),
            description=str(raw.get("description", "")),
            calibration=bool(raw.get("calibration", False)),
            io=str(io),
            options=dict(options),
        )


def load_recipes(path: str | Path | None = None) -> dict[str, Recipe]:
    """All recipes of a recipes file (default: the packaged one), by name, in file order."""
    source = Path(path) if path is not None else RECIPES_FILE
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read recipes from {source}: {exc}", hint="give a JSON recipes file"
        ) from exc
    entries = raw.get("recipes") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: no 'recipes' list", hint=f"see {RECIPES_FILE}")
    out: dict[str, Recipe] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: every recipe must be an object", hint="fix the file")
        recipe = Recipe.from_dict(entry, str(source))
        if recipe.name in out:
            raise ConfigError(f"{source}: recipe {recipe.name!r} defined twice", hint="rename one")
        out[recipe.name] = recipe
    return out


def recipe_names(path: str | Path | None = None) -> list[str]:
    return list(load_recipes(path))


def get_recipe(name: str, path: str | Path | None = None) -> Recipe:
    """The recipe called ``name``; ConfigError listing the known names otherwise."""
    recipes = load_recipes(path)
    if name not in recipes:
        raise ConfigError(
            f"unknown recipe {name!r}",
            hint=f"use one of {', '.join(recipes)} or '{ALL}'",
        )
    return recipes[name]


def resolve(spec: str, path: str | Path | None = None) -> list[Recipe]:
    """``all``, one name, or a comma-separated list of names."""
    if spec == ALL:
        return list(load_recipes(path).values())
    return [get_recipe(name.strip(), path) for name in spec.split(",") if name.strip()]
