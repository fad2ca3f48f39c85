"""Summary statistics for latency samples: one percentile definition used everywhere.

``percentile`` uses linear interpolation between closest ranks (Hyndman & Fan type 7, the
default of ``numpy.percentile`` and of most spreadsheets): for ``n`` sorted samples the
``p``-th percentile sits at rank ``h = (n - 1) * p / 100``; the result is
``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``. So p0 is the minimum,
p100 the maximum, p50 the usual median, and the value is monotone in ``p``.

``std`` is the population standard deviation (divide by ``n``), as TFLite's ``benchmark_model``
reports it. The benchmark (``agent.serving.bench``) and the telemetry windows use these functions so
their figures are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.wire.record import Record

PERCENTILES: tuple[float, ...] = (5.0, 50.0, 90.0, 95.0, 99.0)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of already sorted values, by linear interpolation.

    Raises ValueError on an empty sequence or ``p`` outside [0, 100].
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    rank = (len(sorted_values) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    lo_v = float(sorted_values[low])
    return lo_v + frac * (float(sorted_values[high]) - lo_v)


@dataclass(frozen=True)
class Summary(Record):
    """Distribution of a set of samples (same unit as the samples, e.g. milliseconds)."""

    count: int
    min: float
    max: float
    mean: float
    std: float
    p5: float
    p50: float
    p90: float
    p95: float
    p99: float


def summarize(values: Iterable[float]) -> Summary:
    """min/max/mean/population std and p5/p50/p90/p95/p99 of ``values`` (at least one)."""
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError("cannot summarize zero samples")
    n = len(data)
    mean = math.fsum(data) / n
    var = math.fsum((v - mean) ** 2 for v in data) / n
    p5, p50, p90, p95, p99 = (percentile(data, p) for p in PERCENTILES)
    return Summary(
        count=n,
        min=data[0],
        max=data[-1],
        mean=mean,
        std=math.sqrt(var),
        p5=p5,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
    )


def ns_to_ms(values_ns: Iterable[int]) -> list[float]:
    """Convert integer nanosecond durations (``time.perf_counter_ns`` deltas) to milliseconds."""
    return [v / 1e6 for v in values_ns]
