"""Telemetry windows as stored by the registry, and their roll-up per (class, variant).

A window is one device telemetry record (docs/protocol.md) reduced to the fields the loop
judges. Roll-ups are computed from the stored windows rather than kept as running sums: the
windows are small, any filter (``since`` a deploy, one device) stays possible, and a duplicate
delivery can never be counted twice (the table's key is ``(device, seq)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from agent.wire.status import Telemetry
from deploy.fleet.registry_types import Stats


class WindowRow(NamedTuple):
    device: str
    seq: int
    class_id: str | None
    model_sha256: str | None
    ts: float
    inferences: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    rss_mb: float | None
    peak_rss_mb: float | None
    mj_per_inference: float | None
    energy_measured: int | None
    temp_c: float | None
    throttled: int | None
    window_s: float | None
    energy_basis: str | None = None  # "net" | "gross": which figure mj_per_inference is

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(self)


#: Store one WindowRow (``as_tuple()``), once per (device, seq): a redelivery is a no-op.
WINDOW_INSERT = (
    "INSERT INTO telemetry_windows (device, seq, class_id, model_sha256, ts, "
    "inferences, errors, p50_ms, p95_ms, rss_mb, peak_rss_mb, mj_per_inference, "
    "energy_measured, temp_c, throttled, window_s, energy_basis) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (device, seq) DO NOTHING"
)

#: Move a device's ``last_seen`` forward to ``ts`` (args: ts, device, ts); never backwards.
TOUCH_LAST_SEEN = (
    "UPDATE devices SET last_seen = ? WHERE id = ? AND (last_seen IS NULL OR last_seen < ?)"
)


def window_row(device: str, class_id: str | None, t: Telemetry) -> WindowRow:
    """The fields the loop judges of one :class:`Telemetry` window (parsed by the caller with
    ``Telemetry.from_dict``/``from_json``, which refuse a malformed record). The energy figure
    is the net one where the agent could separate model from idle, else the gross one (a
    negative net, sent by older agents, is never used)."""
    net = t.mj_per_inference_net
    mj = net if net is not None and net >= 0 else t.mj_per_inference
    lat = t.latency_ms or {}
    return WindowRow(
        device=device,
        seq=t.seq,
        class_id=class_id,
        model_sha256=t.sha256,
        ts=t.ts,
        inferences=t.inferences,
        errors=t.errors,
        p50_ms=lat.get("p50"),
        p95_ms=lat.get("p95"),
        rss_mb=t.rss_mb,
        peak_rss_mb=t.peak_rss_mb,
        mj_per_inference=mj,
        energy_measured=None if mj is None else int(bool((t.energy or {}).get("measured"))),
        temp_c=t.temp_c,
        throttled=t.throttled,
        window_s=t.window_s,
        energy_basis=None if mj is None else "net" if mj is net else "gross",
    )


def weighted_median(pairs: Sequence[tuple[float, int]]) -> float | None:
    """Median of ``value`` weighted by ``weight`` (lower median on an exact tie)."""
    items = sorted((v, w) for v, w in pairs if w > 0)
    total = sum(w for _, w in items)
    if total == 0:
        return None
    acc = 0
    for value, weight in items:
        acc += weight
        if 2 * acc >= total:
            return value
    return items[-1][0]  # pragma: no cover - unreachable


# A window is "hot" when the board said it was throttling (the low nibble of vcgencmd's
# get_throttled: under-voltage, frequency capped, throttled, soft temperature limit, now) or its
# temperature reached HOT_C: 80 °C is where a Raspberry Pi 4/5 firmware starts to cap the clock.
HOT_C = 80.0


def is_hot(row: WindowRow) -> bool:
    return bool(row.throttled and row.throttled & 0xF) or (
        row.temp_c is not None and row.temp_c >= HOT_C
    )


def rollup(class_id: str, variant: str, rows: Sequence[WindowRow], *, recent: int = 5) -> Stats:
    """Aggregate windows (ordered by time) of one variant on one class; see :class:`Stats`.

    Hot windows (:func:`is_hot`) are kept apart: the device metrics come from the cool windows
    when there are any (a hot board is not the model's fault), else from the hot ones, and
    ``judged_on_hot`` says so."""
    cool = [r for r in rows if not is_hot(r)]
    hot = len(rows) - len(cool)
    stats = _rollup(class_id, variant, cool if cool else rows, recent)
    return replace(
        stats,
        inferences=sum(r.inferences for r in rows),
        hot_windows=hot,
        judged_on_hot=bool(rows) and not cool,
        windows=stats.windows if cool else len([r for r in rows if r.inferences]),
        throttled_windows=sum(1 for r in rows if r.throttled and r.throttled & 0xF),
        first_ts=rows[0].ts if rows else None,
    )


def _rollup(class_id: str, variant: str, rows: Sequence[WindowRow], recent: int) -> Stats:
    served = [r for r in rows if r.inferences > 0]
    p50 = weighted_median([(r.p50_ms, r.inferences) for r in served if r.p50_ms is not None])
    p95s = [(r.p95_ms, r.inferences) for r in served if r.p95_ms is not None]
    mems = [r.rss_mb if r.rss_mb is not None else r.peak_rss_mb for r in rows]
    peaks = [r.peak_rss_mb for r in rows if r.peak_rss_mb is not None]
    energy = _energy_rows(served)
    energy_n = sum(n for _, n, _ in energy)
    temps = [r.temp_c for r in rows if r.temp_c is not None]
    return Stats(
        class_id=class_id,
        variant=variant,
        windows=len(served),
        inferences=sum(r.inferences for r in rows),
        errors=sum(r.errors for r in rows),
        p50_ms=p50,
        p95_ms=weighted_median(p95s),
        p95_max_ms=max((v for v, _ in p95s), default=None),
        peak_memory_mb=max((m for m in mems if m is not None), default=None),
        peak_rss_mb=max(peaks, default=None),
        mj_per_inference=(sum(mj * n for mj, n, _ in energy) / energy_n) if energy_n else None,
        energy_measured=all(bool(m) for _, _, m in energy) if energy else None,
        energy_basis=_energy_basis(served),
        recent_temps_c=tuple(temps[-recent:]),
        throttled_windows=sum(1 for r in rows if r.throttled and r.throttled & 0xF),
        first_ts=rows[0].ts if rows else None,
        last_ts=rows[-1].ts if rows else None,
    )


def _energy_rows(served: Sequence[WindowRow]) -> list[tuple[float, int, int | None]]:
    """The windows the energy roll-up uses: the net figures where any window has one (a gross
    figure mostly measures the board idling), else the gross ones."""
    net = any(r.energy_basis == "net" for r in served if r.mj_per_inference is not None)
    return [
        (r.mj_per_inference, r.inferences, r.energy_measured)
        for r in served
        if r.mj_per_inference is not None and (not net or r.energy_basis == "net")
    ]


def _energy_basis(served: Sequence[WindowRow]) -> str | None:
    bases = {r.energy_basis or "gross" for r in served if r.mj_per_inference is not None}
    return "net" if "net" in bases else "gross" if bases else None
