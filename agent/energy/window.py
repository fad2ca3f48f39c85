"""Energy over one window of inferences, and the sample-and-hold integral it comes from."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from agent.energy.base import Sample
from agent.wire.record import Record


@dataclass(frozen=True)
class EnergyWindow(Record):
    """Energy over one window of inferences. Power in W, energy per inference in mJ."""

    t0: float
    t1: float
    inferences: int
    avg_w: float | None
    idle_w: float | None
    mj_per_inference: float | None
    mj_per_inference_net: float | None
    energy_j: float | None
    source: str
    measured: bool
    samples: int
    coverage: float  # fraction of [t0, t1] covered by samples
    missing_reason: str | None
    net_missing_reason: str | None = None
    basis: str | None = None  # "net" | "gross": the figure that stands for this window


@dataclass(frozen=True)
class _Integral:
    energy_j: float
    covered_s: float
    samples: int


def integrate(samples: list[Sample], t0: float, t1: float, max_hold_s: float) -> _Integral:
    """Sample-and-hold integral of ``samples`` (sorted by t) over [t0, t1]."""
    if t1 <= t0 or not samples:
        return _Integral(0.0, 0.0, 0)
    times = [s.t for s in samples]
    i = max(0, bisect.bisect_right(times, t0) - 1)
    energy = covered = 0.0
    used = 0
    for j in range(i, len(samples)):
        s = samples[j]
        if s.t >= t1:
            break
        end = s.t + max_hold_s
        if j + 1 < len(samples):
            end = min(end, samples[j + 1].t)
        start, end = max(s.t, t0), min(end, t1)
        if end > start:
            energy += s.watts * (end - start)
            covered += end - start
            used += 1
    return _Integral(energy, covered, used)
