"""The fleet at a glance: one line per hardware class, and the devices worst first.

Pure functions over the fleet rows (:meth:`deploy.fleet.view.FleetWatcher.rows` or
:func:`deploy.loop.status.registry_rows`), so they cost one pass over thousands of devices:

* :func:`mark_stale` adds ``stale``: online but silent for more than ``stale_s`` seconds (its
  last window or birth is that old: a hung agent, a broken link the will has not reported yet).
* :func:`worst_first` orders devices by how much they need a look: offline, then missing their
  targets, then stale, then still measuring or without targets, then meeting them; within each,
  the highest p95 first.
* :func:`class_summary` gives per class: devices, online, stale, the models and variants they
  serve (most common first), the p95 across devices (median and worst), how many meet their
  targets, and the worst device.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

DEFAULT_STALE_S = 300.0


def mark_stale(
    rows: Iterable[dict[str, Any]], stale_s: float = DEFAULT_STALE_S
) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        seen = row.get("last_seen_s")
        stale = bool(row.get("online")) and (seen is None or float(seen) > stale_s)
        out.append(row | {"stale": stale})
    return out


def severity(row: dict[str, Any]) -> int:
    """0 offline, 1 misses its targets, 2 stale, 3 measuring / no status, 4 meets them."""
    if not row.get("online"):
        return 0
    status = str(row.get("targets") or "-")
    if status.startswith("misses"):
        return 1
    if row.get("stale"):
        return 2
    return 4 if status.startswith("meets") else 3


def _p95(row: dict[str, Any]) -> float:
    value = row.get("p95_ms")
    return float(value) if isinstance(value, int | float) else -1.0


def worst_first(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (severity(r), -_p95(r), str(r.get("device"))))


def _counted(values: Iterable[Any], most: int = 2) -> str:
    """``"int8 950, fp32 48 (+1)"``: the commonest values with their counts."""
    counts = Counter(str(v) for v in values if v not in (None, "", "-"))
    if not counts:
        return "-"
    top = counts.most_common(most)
    text = ", ".join(f"{k} {n}" for k, n in top)
    return text + (f" (+{len(counts) - most})" if len(counts) > most else "")


def class_summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per class, the classes with the most devices in trouble first."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(str(row.get("class") or "-"), []).append(row)
    out = []
    for cls, members in by_class.items():
        p95s = [_p95(r) for r in members if _p95(r) >= 0]
        judged = [r for r in members if str(r.get("targets") or "-") not in ("-", "no targets")]
        worst = worst_first(members)[0]
        out.append(
            {
                "class": cls,
                "devices": len(members),
                "online": sum(bool(r.get("online")) for r in members),
                "stale": sum(bool(r.get("stale")) for r in members),
                "model": _counted(r.get("model") for r in members),
                "variant": _counted(r.get("variant") for r in members),
                "p95_median_ms": round(statistics.median(p95s), 3) if p95s else None,
                "p95_worst_ms": round(max(p95s), 3) if p95s else None,
                "targets_met": sum(str(r.get("targets")).startswith("meets") for r in judged),
                "targets_judged": len(judged),
                "trouble": sum(severity(r) <= 2 for r in members),
                "worst": worst.get("device") if severity(worst) <= 2 else None,
            }
        )
    return sorted(out, key=lambda c: (-int(c["trouble"]), str(c["class"])))


SUMMARY_COLUMNS = (
    ("class", 28),
    ("devices", 7),
    ("online", 6),
    ("stale", 5),
    ("model", 18),
    ("variant", 18),
    ("p95_median_ms", 13),
    ("p95_worst_ms", 12),
    ("targets", 9),
    ("worst", 12),
)


def summary_cells(c: dict[str, Any]) -> dict[str, Any]:
    """A class summary as the table shows it (``targets`` as met/judged)."""
    judged = c["targets_judged"]
    return c | {"targets": f"{c['targets_met']}/{judged}" if judged else "-"}
