"""Pareto fronts over the loop's points (lower is better on every metric; pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def pareto_front(
    points: Iterable[Mapping[str, Any]], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Points (dicts with ``metrics`` keys, lower is better, None = unknown = worst) that no
    other point dominates."""
    pts = [dict(p) for p in points]

    def key(p: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(float("inf") if p.get(m) is None else float(p[m]) for m in metrics)

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    keys = [key(p) for p in pts]
    return [p for p, k in zip(pts, keys, strict=True) if not any(dominates(o, k) for o in keys)]
