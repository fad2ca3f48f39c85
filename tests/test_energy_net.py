"""Net energy per inference is never negative (issue 11, item 7): an estimate that cannot
separate the model from idle says so and reports none. On the arithmetic, on the estimate meter
(power from CPU utilisation) and on a simulated USB meter over a pseudo-terminal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.energy import EnergySampler, open_meter
from agent.energy.estimate import EstimateMeter
from agent.energy.net import MIN_NET_W, basis, net_energy
from agent.wire.status import Telemetry
from tests.records import telemetry
from tests.sim_meters import PowerProfile, SimUM25C


@pytest.mark.parametrize(
    ("avg_w", "idle_w", "fragment"),
    [
        (6.17, 6.38, "not above idle"),  # the demo's retained state: -5.19 mJ before
        (3.0, 3.0, "not above idle"),
        (3.0 + MIN_NET_W / 2, 3.0, "cannot be separated"),
        (3.0, None, "no idle baseline"),
        (None, 2.0, "no power figure"),
    ],
)
def test_no_net_figure_when_the_window_is_not_above_idle(avg_w, idle_w, fragment):
    net = net_energy(avg_w, idle_w, 2.0, 100)
    assert net.mj_per_inference is None
    assert net.missing_reason is not None and fragment in net.missing_reason


def test_net_figure_above_idle_and_the_basis():
    net = net_energy(4.0, 3.0, 2.0, 100)
    assert net.mj_per_inference == pytest.approx(1.0 * 2.0 / 100 * 1000)
    assert net.missing_reason is None
    assert basis(40.0, net.mj_per_inference) == "net"
    assert basis(40.0, None) == "gross"
    assert basis(None, None) is None


class _Util:
    """CPU utilisation the estimate meter reads (the one seam faked here)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_an_estimate_whose_idle_baseline_was_busy_reports_no_net_figure():
    util = _Util(0.5)  # the agent starting up: its "idle" baseline is taken while busy
    meter = EstimateMeter("rpi4b", {"interval": "0.02"}, cpu_util=util)
    sampler = EnergySampler(meter, baseline_s=0.1).start()
    try:
        idle = sampler.wait_baseline(5)
        assert idle is not None
        util.value = 0.3  # then it serves a small model: less CPU than at start-up
        low = 2.7 + (6.4 - 2.7) * 0.3
        assert sampler.wait_for(lambda s: s.samples()[-1].watts == pytest.approx(low), 5)
        t0 = sampler.samples()[-1].t
        assert sampler.wait_sample_after(t0 + 0.2, 5)
        w = sampler.window(t0, t0 + 0.2, inferences=20)
    finally:
        sampler.stop()
    assert w.avg_w is not None and w.avg_w < idle
    assert w.mj_per_inference is not None and w.mj_per_inference > 0
    assert w.mj_per_inference_net is None
    assert w.net_missing_reason is not None and "not above idle" in w.net_missing_reason
    assert w.basis == "gross"
    assert w.to_dict()["net_missing_reason"] == w.net_missing_reason


def test_a_usb_meter_under_idle_gives_no_net_figure_and_above_idle_a_positive_one(
    tmp_path: Path,
) -> None:
    profile = PowerProfile(3.0)
    with SimUM25C(tmp_path / "rfcomm0", profile):
        sampler = EnergySampler(
            open_meter(f"um25c:{tmp_path / 'rfcomm0'}?interval=0.05"),
            baseline_s=0.3,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        ).start()
        try:
            assert sampler.wait_baseline(10) == pytest.approx(3.0, rel=0.01)
            profile.set(2.9)  # the board draws less than its baseline (e.g. a fan stopped)
            t0 = time.monotonic()
            time.sleep(0.6)
            t1 = time.monotonic()
            assert sampler.wait_sample_after(t1 + 0.05, 10)
            below = sampler.window(t0 + 0.1, t1, inferences=30)
            profile.set(4.0)
            t2 = time.monotonic()
            time.sleep(0.6)
            t3 = time.monotonic()
            assert sampler.wait_sample_after(t3 + 0.05, 10)
            above = sampler.window(t2 + 0.1, t3, inferences=30)
        finally:
            sampler.stop()
    assert below.measured and below.mj_per_inference is not None
    assert below.mj_per_inference_net is None and below.basis == "gross"
    assert below.net_missing_reason is not None and "not above idle" in below.net_missing_reason
    assert above.mj_per_inference_net is not None and above.basis == "net"
    assert above.mj_per_inference_net == pytest.approx(
        (4.0 - 3.0) * (t3 - t2 - 0.1) / 30 * 1000, rel=0.15
    )


def _record(seq: int, gross: float | None, net: float | None) -> Telemetry:
    energy = {"mj_per_inference": gross, "mj_per_inference_net": net, "measured": False}
    return Telemetry.from_dict(telemetry(seq, 100.0 + seq, inferences=50, p95=2.0, energy=energy))


def test_the_host_rolls_up_the_net_figure_where_one_exists_and_says_which():
    from deploy.fleet.rollup import rollup, window_row
    from deploy.report import energy_label

    rows = [
        window_row("pi-01", "c", _record(0, 300.0, None)),  # not separable: gross
        window_row("pi-01", "c", _record(1, 310.0, 4.0)),
        window_row("pi-01", "c", _record(2, 290.0, 6.0)),
        window_row("pi-01", "c", _record(3, 280.0, -5.19)),  # an old agent's negative net
    ]
    assert [r.energy_basis for r in rows] == ["gross", "net", "net", "gross"]
    assert rows[3].mj_per_inference == 280.0  # a negative net is never used
    st = rollup("c", "v", rows)
    assert st.energy_basis == "net" and st.mj_per_inference == pytest.approx(5.0)
    only_gross = rollup("c", "v", [rows[0], rows[3]])
    assert only_gross.energy_basis == "gross" and only_gross.mj_per_inference == 290.0
    assert energy_label(rows[1:3]).startswith("energy net") and "estimated" in energy_label(rows)
    assert energy_label([rows[0]]).startswith("energy gross")
