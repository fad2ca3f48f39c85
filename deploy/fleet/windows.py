"""Telemetry-window queries beside the registry core: what each device has stored.

``window_counts`` feeds ``edge-deploy fleet --json`` (``windows``, ``last_seq``) and the
benchmarks' loss check: a device that published seqs 0..n-1 has lost nothing when it has n
windows and ``last_seq`` n-1 (gapless seq per device at the registry).
"""

from __future__ import annotations

from typing import Any

from deploy.fleet.registry import Registry


def window_counts(registry: Registry) -> dict[str, tuple[int, int, int]]:
    """device -> (windows stored, lowest seq, highest seq)."""
    rows = registry._all(
        "SELECT device, COUNT(*), MIN(seq), MAX(seq) FROM telemetry_windows GROUP BY device"
    )
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def with_window_counts(registry: Registry, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fleet rows plus ``id``, ``windows`` and ``last_seq`` (None before the first window)."""
    counts = window_counts(registry)
    out = []
    for row in rows:
        n, _lo, hi = counts.get(str(row.get("device")), (0, 0, -1))
        out.append({"id": row.get("device")} | row | {"windows": n, "last_seq": hi if n else None})
    return out


def gaps(registry: Registry) -> dict[str, int]:
    """Windows missing per device between its lowest and highest stored seq (0: gapless)."""
    return {
        d: hi - lo + 1 - n for d, (n, lo, hi) in window_counts(registry).items() if hi - lo + 1 != n
    }
