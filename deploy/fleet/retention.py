"""Retention: raw telemetry windows for a bounded age (and count), hourly roll-ups beyond.

The loop judges a variant on the raw windows since its deploy (``Registry.class_stats``), so
the policy keeps those for ``keep_s`` (default 7 days: longer than any trial or watch window)
and at most ``keep_windows`` in all. Older windows are folded, in the same transaction that
deletes them, into ``telemetry_hourly``: one row per (class, model sha256, hour) holding sums,
counts and maxima (migration 5), so a window that arrives late for an hour already rolled up
folds in exactly, and the registry's size stops growing at about
``keep_s x windows/s x bytes per window`` plus ~300 bytes per (class, model, hour).

What a roll-up keeps of the loop's statistics (:class:`HourStats`): windows, inferences and
errors; p50 and p95 as inference-weighted MEANS of the windows' values (the raw roll-up's
weighted median cannot be merged) with the worst p95; the largest window-end RSS and
ru_maxrss; energy per inference weighted by inferences, net-of-idle where any window had it;
hot and throttled window counts and the highest temperature.

Cutoffs are whole hours and never the current one: an hour is rolled up once it is entirely
older than the policy, and its raw windows leave in the same transaction.

    edge-deploy retention --registry REG [--keep-days 7] [--keep-windows N] [--json]

(run it from a timer, e.g. hourly; it is idempotent.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from agent.wire.record import Record
from deploy.fleet.registry import Registry
from deploy.fleet.rollup import HOT_C

HOUR = 3600
DEFAULT_KEEP_S = 7 * 86400.0

_SUMS = """
COUNT(*),
SUM(CASE WHEN inferences > 0 THEN 1 ELSE 0 END),
SUM(inferences), SUM(errors),
COALESCE(SUM(CASE WHEN inferences > 0 AND p50_ms IS NOT NULL THEN p50_ms * inferences END), 0),
COALESCE(SUM(CASE WHEN inferences > 0 AND p50_ms IS NOT NULL THEN inferences END), 0),
COALESCE(SUM(CASE WHEN inferences > 0 AND p95_ms IS NOT NULL THEN p95_ms * inferences END), 0),
COALESCE(SUM(CASE WHEN inferences > 0 AND p95_ms IS NOT NULL THEN inferences END), 0),
MAX(CASE WHEN inferences > 0 THEN p95_ms END),
MAX(rss_mb), MAX(peak_rss_mb),
COALESCE(SUM(CASE WHEN inferences > 0 AND energy_basis = 'net' THEN mj_per_inference * inferences
    END), 0),
COALESCE(SUM(CASE WHEN inferences > 0 AND energy_basis = 'net' THEN inferences END), 0),
COALESCE(SUM(CASE WHEN inferences > 0 AND COALESCE(energy_basis, 'gross') = 'gross'
    AND mj_per_inference IS NOT NULL THEN mj_per_inference * inferences END), 0),
COALESCE(SUM(CASE WHEN inferences > 0 AND COALESCE(energy_basis, 'gross') = 'gross'
    AND mj_per_inference IS NOT NULL THEN inferences END), 0),
SUM(CASE WHEN mj_per_inference IS NOT NULL THEN 1 ELSE 0 END),
SUM(CASE WHEN mj_per_inference IS NOT NULL AND energy_measured = 1 THEN 1 ELSE 0 END),
SUM(CASE WHEN (throttled & 15) != 0 OR temp_c >= {hot} THEN 1 ELSE 0 END),
SUM(CASE WHEN (throttled & 15) != 0 THEN 1 ELSE 0 END),
MAX(temp_c), MIN(ts), MAX(ts)
"""
# fmt: skip on the two column lists below: packed, they read as the table; one per line, 40 lines
_ADDED = (
    "windows", "served_windows", "inferences", "errors", "p50_wsum", "p50_w", "p95_wsum",
    "p95_w", "mj_net_wsum", "mj_net_w", "mj_gross_wsum", "mj_gross_w", "energy_windows",
    "energy_measured_windows", "hot_windows", "throttled_windows",
)  # fmt: skip
_MAXED = ("p95_max_ms", "rss_max_mb", "peak_rss_max_mb", "temp_max_c", "last_ts")
_COLUMNS = (
    "class_id", "model_sha256", "hour", "windows", "served_windows", "inferences", "errors",
    "p50_wsum", "p50_w", "p95_wsum", "p95_w", "p95_max_ms", "rss_max_mb", "peak_rss_max_mb",
    "mj_net_wsum", "mj_net_w", "mj_gross_wsum", "mj_gross_w", "energy_windows",
    "energy_measured_windows", "hot_windows", "throttled_windows", "temp_max_c", "first_ts",
    "last_ts",
)  # fmt: skip


def _greatest(col: str) -> str:
    old, new = f"telemetry_hourly.{col}", f"excluded.{col}"
    return f"{col} = CASE WHEN {old} IS NULL OR {new} > {old} THEN {new} ELSE {old} END"


def _fold_sql(hour_sql: str) -> str:
    updates = [f"{c} = telemetry_hourly.{c} + excluded.{c}" for c in _ADDED]
    updates += [_greatest(c) for c in _MAXED]
    updates.append(
        "first_ts = CASE WHEN excluded.first_ts < telemetry_hourly.first_ts "
        "THEN excluded.first_ts ELSE telemetry_hourly.first_ts END"
    )
    return (
        f"INSERT INTO telemetry_hourly ({', '.join(_COLUMNS)}) "
        f"SELECT COALESCE(class_id, ''), COALESCE(model_sha256, ''), {hour_sql}, "
        + _SUMS.format(hot=HOT_C)
        + " FROM telemetry_windows WHERE ts < ? "
        f"GROUP BY COALESCE(class_id, ''), COALESCE(model_sha256, ''), {hour_sql} "
        "ON CONFLICT (class_id, model_sha256, hour) DO UPDATE SET " + ", ".join(updates)
    )


@dataclass(frozen=True)
class RetentionPolicy:
    keep_s: float = DEFAULT_KEEP_S
    keep_windows: int | None = None  # at most this many raw windows (whole hours go first)


@dataclass(frozen=True)
class RetentionResult(Record):
    cutoff: float  # raw windows with ts < cutoff were rolled up and deleted
    rolled_up: int  # windows folded into telemetry_hourly (and deleted)
    hours: int  # (class, model, hour) rows written or updated
    kept: int  # raw windows left


@dataclass(frozen=True)
class HourStats:
    """One roll-up row, in the loop's terms (means where the raw roll-up has medians)."""

    class_id: str | None
    model_sha256: str | None
    hour_start: float
    windows: int
    inferences: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p95_max_ms: float | None
    peak_memory_mb: float | None
    peak_rss_mb: float | None
    mj_per_inference: float | None
    energy_basis: str | None
    energy_measured: bool | None
    hot_windows: int
    throttled_windows: int
    temp_max_c: float | None


def cutoff(registry: Registry, policy: RetentionPolicy, now: float) -> float:
    """The hour boundary before which raw windows go: by age, then earlier hours still while
    more than ``keep_windows`` would stay. Never inside the current hour."""
    current = math.floor(now / HOUR) * HOUR
    cut = min(current, math.floor((now - policy.keep_s) / HOUR) * HOUR)
    if policy.keep_windows is not None:
        (n,) = registry._all("SELECT COUNT(*) FROM telemetry_windows WHERE ts >= ?", (cut,))[0]
        extra = int(n) - policy.keep_windows
        if extra > 0:
            rows = registry._all(
                "SELECT ts FROM telemetry_windows WHERE ts >= ? ORDER BY ts LIMIT 1 OFFSET ?",
                (cut, extra - 1),
            )
            if rows:  # the hour holding the last window to drop goes too
                cut = min(current, (math.floor(float(rows[0][0]) / HOUR) + 1) * HOUR)
    return float(cut)


def apply_retention(
    registry: Registry, policy: RetentionPolicy, *, now: float | None = None
) -> RetentionResult:
    """Roll up and delete the raw windows the policy no longer keeps (one transaction)."""
    cut = cutoff(registry, policy, time.time() if now is None else now)
    with registry.transaction() as db:
        hours = db.execute(_fold_sql(db.hour_sql), (cut,)).rowcount
        deleted = db.execute("DELETE FROM telemetry_windows WHERE ts < ?", (cut,)).rowcount
    (kept,) = registry._all("SELECT COUNT(*) FROM telemetry_windows")[0]
    return RetentionResult(cut, int(deleted), max(0, int(hours)), int(kept))


def hourly(registry: Registry, class_id: str | None, sha256: str | None) -> list[HourStats]:
    """The roll-ups of one model (by sha256) on one class, oldest first."""
    rows = registry._all(
        f"SELECT {', '.join(_COLUMNS)} FROM telemetry_hourly WHERE class_id = ? AND "
        "model_sha256 = ? ORDER BY hour",
        (class_id or "", sha256 or ""),
    )
    return [_hour_stats(dict(r)) for r in rows]


def _hour_stats(r: dict[str, Any]) -> HourStats:
    def mean(wsum: str, w: str) -> float | None:
        return float(r[wsum]) / int(r[w]) if int(r[w]) else None

    net = mean("mj_net_wsum", "mj_net_w")
    gross = mean("mj_gross_wsum", "mj_gross_w")
    energy = int(r["energy_windows"])
    return HourStats(
        class_id=r["class_id"] or None,
        model_sha256=r["model_sha256"] or None,
        hour_start=float(int(r["hour"]) * HOUR),
        windows=int(r["served_windows"]),
        inferences=int(r["inferences"]),
        errors=int(r["errors"]),
        p50_ms=mean("p50_wsum", "p50_w"),
        p95_ms=mean("p95_wsum", "p95_w"),
        p95_max_ms=r["p95_max_ms"],
        peak_memory_mb=r["rss_max_mb"] if r["rss_max_mb"] is not None else r["peak_rss_max_mb"],
        peak_rss_mb=r["peak_rss_max_mb"],
        mj_per_inference=net if net is not None else gross,
        energy_basis="net" if net is not None else "gross" if gross is not None else None,
        energy_measured=None if not energy else int(r["energy_measured_windows"]) == energy,
        hot_windows=int(r["hot_windows"]),
        throttled_windows=int(r["throttled_windows"]),
        temp_max_c=r["temp_max_c"],
    )
