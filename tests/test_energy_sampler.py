"""The sampler's arithmetic and its failure handling, driven by a scripted meter (the one fake)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

import pytest

from agent.energy import EnergySampler, Sample, integrate
from agent.energy.base import GONE, Meter, meter_error
from agent.energy.estimate import EstimateMeter


class ScriptedMeter(Meter):
    """Returns scripted results in order (samples or exceptions), then nothing."""

    kind: ClassVar[str] = "scripted"
    default_interval_s: ClassVar[float] = 0.01

    def __init__(self, script: list[list[Sample] | Exception | Callable[[], list[Sample]]]):
        super().__init__("test")
        self.script = list(script)
        self.calls = 0
        self.closes = 0
        self.done = threading.Event()

    def read(self) -> list[Sample]:
        self.calls += 1
        if not self.script:
            self.done.set()
            return []
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item() if callable(item) else item

    def close(self) -> None:
        self.closes += 1


def run(meter: ScriptedMeter, **kwargs) -> EnergySampler:
    sampler = EnergySampler(meter, **kwargs).start()
    assert meter.done.wait(5), "the sampler did not consume the script"
    return sampler


def test_integrate_holds_each_sample_until_the_next():
    s = [Sample(0.0, 2.0), Sample(1.0, 4.0), Sample(3.0, 2.0)]
    part = integrate(s, 0.5, 3.5, max_hold_s=10)
    assert part.energy_j == pytest.approx(2 * 0.5 + 4 * 2 + 2 * 0.5)
    assert part.covered_s == pytest.approx(3.0) and part.samples == 3


def test_integrate_leaves_gaps_longer_than_max_hold_uncovered():
    part = integrate([Sample(0.0, 5.0), Sample(10.0, 1.0)], 0.0, 11.0, max_hold_s=2.0)
    assert part.covered_s == pytest.approx(3.0)  # 0..2 and 10..11
    assert part.energy_j == pytest.approx(5 * 2 + 1 * 1)


def test_window_gross_and_net_energy_per_inference():
    b = time.monotonic()
    meter = ScriptedMeter(
        [[Sample(b, 2.0)], [Sample(b + 1, 4.0)], [Sample(b + 3, 2.0)], [Sample(b + 4, 2.0)]]
    )
    sampler = run(meter, baseline_s=0.5, max_hold_s=10)
    try:
        w = sampler.window(b + 0.5, b + 3.5, inferences=10)
    finally:
        sampler.stop()
    assert w.idle_w == pytest.approx(2.0)  # the first 0.5 s of samples
    assert w.avg_w == pytest.approx(10.0 / 3.0)
    assert w.energy_j == pytest.approx(10.0)
    assert w.mj_per_inference == pytest.approx(10.0 / 10 * 1000)  # 1000 mJ
    assert w.mj_per_inference_net == pytest.approx((10.0 / 3.0 - 2.0) * 3.0 / 10 * 1000)
    assert (w.samples, w.coverage, w.missing_reason) == (3, 1.0, None)
    assert (w.source, w.measured) == ("scripted:test", True)
    d = w.to_dict()
    assert {
        "avg_w",
        "idle_w",
        "mj_per_inference",
        "mj_per_inference_net",
        "source",
        "measured",
        "samples",
        "missing_reason",
    } <= set(d)


def test_window_without_inferences_refreshes_the_idle_baseline():
    b = time.monotonic()
    meter = ScriptedMeter([[Sample(b + k * 0.5, 3.0 if k < 4 else 1.5)] for k in range(20)])
    sampler = run(meter, baseline_s=1.0, auto_idle_min_s=2.0)
    try:
        assert sampler.idle_w == pytest.approx(3.0)
        w = sampler.window(b + 3.0, b + 9.0, inferences=0)
        assert w.mj_per_inference is None and w.avg_w == pytest.approx(1.5)
        assert sampler.idle_w == pytest.approx(1.5)
        short = sampler.window(b + 0.0, b + 1.0, inferences=0)  # too short to count as idle
        assert short.avg_w == pytest.approx(3.0) and sampler.idle_w == pytest.approx(1.5)
        assert sampler.mark_idle_baseline(b, b + 1.5) == pytest.approx(3.0)
        assert sampler.idle(b + 100, b + 101) is None  # no samples then: unchanged
        assert sampler.idle_w == pytest.approx(3.0)
        assert sampler.energy_between(b + 1.0, b + 3.0) == pytest.approx(3.0 + 1.5 * 1)
    finally:
        sampler.stop()


def test_inferences_during_the_start_up_span_discard_that_baseline():
    """A device that serves at once (a reboot with a model): its first seconds are not idle."""
    b = time.monotonic()
    meter = ScriptedMeter([[Sample(b + k * 0.5, 5.0 if k < 8 else 2.0)] for k in range(20)])
    sampler = run(meter, baseline_s=1.0, auto_idle_min_s=2.0)
    try:
        assert sampler.idle_w == pytest.approx(5.0)  # taken before any window was reported
        busy = sampler.window(b + 0.5, b + 3.0, inferences=50)  # overlaps the start-up span
        assert busy.idle_w is None and busy.mj_per_inference_net is None
        assert busy.mj_per_inference == pytest.approx(5.0 * 2.5 / 50 * 1000)
        assert sampler.idle_w is None
        idle = sampler.window(b + 4.0, b + 9.0, inferences=0)  # then the board goes idle
        assert idle.avg_w == pytest.approx(2.0) and sampler.idle_w == pytest.approx(2.0)
        later = sampler.window(b + 0.2, b + 9.0, inferences=10)  # only the start-up one goes
        assert later.idle_w == pytest.approx(2.0)
    finally:
        sampler.stop()


def test_no_start_up_baseline_when_inferences_ran_before_it_was_complete():
    b = time.monotonic()
    gate = threading.Event()

    def later() -> list[Sample]:
        assert gate.wait(5)
        return [Sample(b + 3.0, 5.0)]

    meter = ScriptedMeter([[Sample(b, 5.0)], [Sample(b + 0.5, 5.0)], later])
    sampler = EnergySampler(meter, baseline_s=1.0).start()
    try:
        assert sampler.wait_for(lambda s: len(s.samples()) == 2, 5)
        sampler.window(b + 0.2, b + 0.6, inferences=3)  # reported before the span completed
        gate.set()
        assert meter.done.wait(5)
        assert sampler.wait_baseline(0.5) is None  # given up, not waited for
        assert sampler.idle_w is None
    finally:
        sampler.stop()


def test_failing_meter_gives_windows_a_missing_reason_and_is_reconnected():
    b = time.monotonic()
    gone = meter_error(GONE, "serial port /dev/rfcomm0 does not exist")
    meter = ScriptedMeter(
        [[Sample(b, 2.0)], gone, gone, RuntimeError("driver bug"), [Sample(b + 5, 3.0)]]
    )
    sampler = run(meter, baseline_s=10, max_hold_s=1.0, backoff_initial_s=0.01)
    try:
        w = sampler.window(b + 1.5, b + 4.5, inferences=7)
        assert w.avg_w is None and w.mj_per_inference is None and w.mj_per_inference_net is None
        assert w.missing_reason is not None
        assert w.missing_reason.startswith("meter_error: RuntimeError: driver bug")
        assert "0%" in w.missing_reason
        assert meter.closes >= 3  # closed after every failure so the next read reconnects
        later = sampler.window(b + 5.0, b + 5.5, inferences=1)
        assert later.avg_w == pytest.approx(3.0) and later.missing_reason is None
        assert sampler.status()["errors"] == 3
    finally:
        sampler.stop()


def test_backoff_slows_reconnection_attempts():
    gone = meter_error(GONE, "unplugged")
    meter = ScriptedMeter([gone] * 1000)
    sampler = EnergySampler(meter, backoff_initial_s=0.02, backoff_max_s=0.4).start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.stop()
    # 0.01-0.02, 0.02-0.04, ... capped at 0.2-0.4 s: at most ~10 attempts in a second
    assert 3 <= meter.calls <= 12


def test_window_before_any_sample_says_why():
    sampler = EnergySampler(ScriptedMeter([]))
    w = sampler.window(0.0, 1.0, 5)
    assert w.missing_reason is not None and w.missing_reason.startswith("meter not started")
    assert sampler.window(1.0, 1.0, 5).missing_reason == "empty window"


def test_estimate_meter_windows_are_labelled_not_measured():
    busy = threading.Event()
    meter = EstimateMeter(
        "rpi4b", {"interval": "0.02"}, cpu_util=lambda: 1.0 if busy.is_set() else 0.0
    )
    sampler = EnergySampler(meter, baseline_s=0.05).start()
    try:
        assert sampler.wait_baseline(5) == pytest.approx(2.7)
        busy.set()
        assert sampler.wait_for(lambda s: s.samples()[-1].watts == 6.4, 5)
        t0 = sampler.samples()[-1].t
        assert sampler.wait_sample_after(t0 + 0.2, 5)
        w = sampler.window(t0, t0 + 0.2, inferences=4)
    finally:
        sampler.stop()
    assert w.measured is False and w.source == "estimate:rpi4b"
    assert w.avg_w == pytest.approx(6.4)
    assert w.mj_per_inference_net == pytest.approx((6.4 - 2.7) * 0.2 / 4 * 1000)
