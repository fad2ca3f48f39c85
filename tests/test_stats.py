"""agent.serving.stats: the one percentile definition (linear interpolation) and the latency
summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.serving.stats import ns_to_ms, percentile, summarize


def test_percentile_interpolates_linearly_between_ranks() -> None:
    data = [10.0, 20.0, 30.0, 40.0]
    assert percentile(data, 0) == 10.0
    assert percentile(data, 100) == 40.0
    assert percentile(data, 50) == 25.0  # halfway between ranks 1 and 2
    assert percentile(data, 90) == pytest.approx(37.0)  # rank 2.7


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=200))
def test_percentile_matches_numpy_linear_and_is_monotone(values: list[float]) -> None:
    data = sorted(values)
    previous = -math.inf
    for p in (0.0, 5.0, 50.0, 90.0, 95.0, 99.0, 100.0):
        got = percentile(data, p)
        assert got == pytest.approx(float(np.percentile(data, p)), rel=1e-9, abs=1e-6)
        assert got >= previous - 1e-9
        previous = got


def test_summary_uses_population_std_and_orders_percentiles() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.count, s.min, s.max, s.mean) == (4, 1.0, 4.0, 2.5)
    assert s.std == pytest.approx(math.sqrt(1.25))  # divide by n, not n - 1
    assert s.min <= s.p5 <= s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.max
    assert set(s.to_dict()) >= {"min", "max", "mean", "std", "p5", "p50", "p90", "p95", "p99"}


def test_summary_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        summarize([])


def test_ns_to_ms() -> None:
    assert ns_to_ms([1_500_000, 2_000]) == [1.5, 0.002]
