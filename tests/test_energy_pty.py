"""End to end on pseudo-terminals: simulated meters speaking the real protocols, the real meter
code over pyserial, the sampling thread, and the energy arithmetic against an exact truth."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.energy import EnergySampler, EnergyWindow, open_meter
from tests.sim_meters import PowerProfile, SimLineMeter, SimUM25C, burst_workload

IDLE_W, LOAD_W = 2.5, 5.0


def infer() -> int:
    """A synthetic inference: a little deterministic CPU work."""
    return sum(i * i for i in range(3000))


def workload(profile: PowerProfile, bursts: int = 3, burst_s: float = 0.7, gap_s: float = 0.3):
    """Bursts of inferences with the profile at LOAD_W, idle gaps between. Returns (t0, t1, n)."""
    return burst_workload(
        profile, infer, idle_w=IDLE_W, load_w=LOAD_W, bursts=bursts, burst_s=burst_s, gap_s=gap_s
    )


def truth(profile: PowerProfile, t0: float, t1: float, n: int) -> tuple[float, float]:
    joules = profile.integral(t0, t1)
    return joules / n * 1000, (joules - IDLE_W * (t1 - t0)) / n * 1000


def measure(spec: str, profile: PowerProfile):
    """A sampler started on ``spec`` over :func:`workload`, stopped at the end:
    (the sampler, the workload's window, the truth)."""
    sampler = started(spec)
    try:
        assert sampler.wait_baseline(10) == pytest.approx(IDLE_W, rel=0.01)
        t0, t1, n = workload(profile)
        assert sampler.wait_sample_after(t1 + 0.05, 10)  # the hold of the last load sample is known
        return sampler, sampler.window(t0, t1, n), truth(profile, t0, t1, n)
    finally:
        sampler.stop()


@pytest.fixture
def profile() -> PowerProfile:
    return PowerProfile(IDLE_W)


@pytest.fixture
def um25c(tmp_path: Path, profile: PowerProfile) -> Iterator[SimUM25C]:
    sim = SimUM25C(tmp_path / "rfcomm0", profile)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def line_meter(tmp_path: Path, profile: PowerProfile) -> Iterator[SimLineMeter]:
    sim = SimLineMeter(tmp_path / "ttyACM0", profile, rate_hz=50)
    sim.start()
    yield sim
    sim.stop()


def started(spec: str, **kwargs) -> EnergySampler:
    kwargs.setdefault("baseline_s", 0.4)
    kwargs.setdefault("backoff_initial_s", 0.05)
    kwargs.setdefault("backoff_max_s", 0.2)
    return EnergySampler(open_meter(spec), **kwargs).start()


def assert_close(window: EnergyWindow, expected: tuple[float, float], rel: float = 0.10) -> None:
    gross, net = expected
    assert window.missing_reason is None
    assert window.mj_per_inference == pytest.approx(gross, rel=rel)
    assert window.mj_per_inference_net == pytest.approx(net, rel=rel)


# -- accuracy ------------------------------------------------------------------------------------


def test_um25c_energy_per_inference_matches_the_profile(um25c, profile):
    sampler, window, expected = measure(f"um25c:{um25c.path}?interval=0.05", profile)
    assert_close(window, expected)
    assert window.source == f"um25c:{um25c.path}" and window.measured is True
    assert window.samples >= 20
    assert sampler.meter.describe()["model"] == "UM25C"


@pytest.mark.parametrize(
    ("fmt", "spec_options"),
    [("csv", "format=csv&fields=ms,mV,mA"), ("json", "format=json&fields=v:V,i:A")],
)
def test_line_meter_energy_per_inference_matches_the_profile(tmp_path, profile, fmt, spec_options):
    with SimLineMeter(tmp_path / "ttyACM0", profile, fmt=fmt, rate_hz=50) as sim:
        sampler, window, expected = measure(f"serial_lines:{sim.path}?{spec_options}", profile)
    assert_close(window, expected)
    assert sampler.meter.describe()["bad_lines"] <= 1  # at most a line cut by the open


# -- faults on the UM25C link --------------------------------------------------------------------


def wait_failing(sampler: EnergySampler, code: str, timeout: float = 10.0) -> float:
    """Wait until the sampler reports an error with ``code``; return the time it was seen."""
    assert sampler.wait_for(lambda s: (s.last_error() or "").startswith(code), timeout), (
        sampler.status()
    )
    return time.monotonic()


@contextlib.contextmanager
def with_baseline(spec: str, **kwargs) -> Iterator[EnergySampler]:
    """A started sampler once its idle baseline exists; stopped at the end."""
    sampler = started(spec, **kwargs)
    try:
        assert sampler.wait_baseline(10) is not None
        yield sampler
    finally:
        sampler.stop()


def outage(sampler: EnergySampler, code: str, seconds: float = 0.6):
    """Wait for the error ``code``, let the outage last ``seconds``; its window."""
    t_fail = wait_failing(sampler, code)
    deadline = t_fail + seconds
    while time.monotonic() < deadline:  # let the outage last
        time.sleep(0.02)
    return sampler.window(t_fail, deadline, inferences=10)


def assert_resumes(sampler: EnergySampler, watts: float = IDLE_W) -> None:
    assert sampler.wait_sample_after(time.monotonic(), 15), sampler.status()
    t = sampler.samples()[-1].t  # the first reading after recovery
    assert sampler.wait_sample_after(t + 0.3, 15)
    window = sampler.window(t, t + 0.3, inferences=3)
    assert window.missing_reason is None and window.avg_w == pytest.approx(watts, rel=0.01)
    assert sampler.is_alive()


def test_um25c_unplugged_then_replugged(um25c):
    with with_baseline(f"um25c:{um25c.path}?interval=0.05&timeout=0.3", max_hold_s=0.2) as sampler:
        um25c.unplug()  # pty closed and the symlink deleted
        window = outage(sampler, "meter_gone")
        assert window.avg_w is None and window.mj_per_inference is None
        assert window.missing_reason is not None and "meter_gone" in window.missing_reason
        assert sampler.is_alive()
        um25c.replug()
        assert_resumes(sampler)


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("silent", "meter_silent"),
        ("partial", "meter_garbage"),
        ("wrong_model", "meter_wrong_model"),
    ],
)
def test_um25c_misbehaving_meter_is_reported_and_recovers(um25c, mode, code):
    with with_baseline(f"um25c:{um25c.path}?interval=0.05&timeout=0.3", max_hold_s=0.2) as sampler:
        um25c.mode = mode
        window = outage(sampler, code)
        assert window.missing_reason is not None and code in window.missing_reason
        um25c.mode = "ok"
        assert_resumes(sampler)


def test_um25c_resynchronises_through_garbage_without_losing_readings(um25c, profile):
    with with_baseline(f"um25c:{um25c.path}?interval=0.05&timeout=0.5", max_hold_s=0.2) as sampler:
        um25c.mode = "garbage"
        profile.set(4.0)
        t = time.monotonic()
        assert sampler.wait_sample_after(t + 1.0, 10)
        window = sampler.window(t + 0.2, t + 1.0, inferences=8)
    assert window.missing_reason is None and window.avg_w == pytest.approx(4.0, rel=0.01)
    assert sampler.meter.describe()["bad_bytes"] > 0


def test_um25c_configured_model_must_match(um25c):
    sampler = started(f"um25c:{um25c.path}?model=um24c&interval=0.05&timeout=0.3")
    try:
        wait_failing(sampler, "meter_wrong_model")
        reason = sampler.last_error() or ""
    finally:
        sampler.stop()
    assert "is a UM25C, but model=um24c" in reason
    assert sampler.samples() == []


# -- faults on the line meter --------------------------------------------------------------------


def line_sampler(
    line_meter: SimLineMeter, options: str = "&timeout=0.3"
) -> contextlib.AbstractContextManager[EnergySampler]:
    """:func:`with_baseline` on the line meter's ms,mV,mA CSV lines (``options`` appended)."""
    return with_baseline(f"serial_lines:{line_meter.path}?fields=ms,mV,mA{options}", max_hold_s=0.2)


def test_line_meter_unplugged_then_replugged(line_meter):
    with line_sampler(line_meter) as sampler:
        line_meter.unplug()
        window = outage(sampler, "meter_gone")
        assert window.missing_reason is not None and "meter_gone" in window.missing_reason
        line_meter.replug()
        assert_resumes(sampler)


def test_line_meter_silent_then_back(line_meter):
    with line_sampler(line_meter) as sampler:
        line_meter.mode = "silent"
        window = outage(sampler, "meter_silent")
        assert window.missing_reason is not None and "meter_silent" in window.missing_reason
        line_meter.mode = "ok"
        assert_resumes(sampler)


def test_line_meter_skips_and_counts_bad_lines(line_meter):
    with line_sampler(line_meter, "") as sampler:
        line_meter.mode = "garbage"
        t = time.monotonic()
        assert sampler.wait_for(lambda s: s.meter.describe()["bad_lines"] >= 3, 10)
        assert sampler.wait_sample_after(t + 0.5, 10)
        window = sampler.window(t, t + 0.5, inferences=5)
    assert window.missing_reason is None and window.avg_w == pytest.approx(IDLE_W, rel=0.01)
