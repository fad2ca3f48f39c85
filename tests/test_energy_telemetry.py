"""Energy in the daemon's telemetry: a simulated UM25C on a pty, the real agent subprocess."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.push import push_model
from tests.agent_proc import AgentProcess, observing
from tests.broker import Broker
from tests.modelzoo import model
from tests.sim_meters import PowerProfile, SimUM25C

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

IDLE_W, LOAD_W = 2.5, 5.0


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[tuple[SimUM25C, PowerProfile]]:
    profile = PowerProfile(IDLE_W)
    sim = SimUM25C(tmp_path / "rfcomm0", profile)
    sim.start()
    yield sim, profile
    sim.stop()


def test_telemetry_windows_carry_measured_energy_and_survive_an_unplugged_meter(
    tmp_path: Path,
    broker: Broker,
    keys_dir: Path,
    start_agent: Callable[..., AgentProcess],
    meter: tuple[SimUM25C, PowerProfile],
) -> None:
    sim, profile = meter
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[energy]\nidle_baseline_s = 1.0\n")
    start_agent(
        "pi-01",
        extra_args=["--config", str(cfg), "--meter", f"um25c:{sim.path}?interval=0.1",
                    "--loadgen-rate", "100"],
    )  # fmt: skip
    with observing(broker, "pi-01") as obs:
        # the idle baseline comes from the agent's first idle second: inferences that overlap it
        # would discard it (agent/energy/sampler.py), so deploy once it exists
        def has_baseline(m) -> bool:
            if not m.topic.endswith("/telemetry"):
                return False
            return (json.loads(m.payload).get("energy") or {}).get("idle_w") is not None

        assert obs.wait_message(has_baseline, 30, "a telemetry window with an idle baseline")
        result = push_model(
            model("digits_int8"), "pi-01", BrokerAddress(broker.host, broker.port),
            load_private(keys_dir), name="digits", version="1", release=1,
            gates={"min_inferences": 20, "min_seconds": 0.5}, progress=None, timeout_s=120,
        )  # fmt: skip
        assert result.ok, result
        # the board draws more while it serves the load generator (both processes read the
        # same CLOCK_MONOTONIC, so window times and the switch time compare directly)
        switched = profile.set(LOAD_W)

        def measured_under_load(m) -> bool:
            if not m.topic.endswith("/telemetry"):
                return False
            rec = json.loads(m.payload)
            e = rec.get("energy") or {}
            return bool(rec["inferences"] > 0 and e.get("avg_w") and e["t0"] >= switched)

        msg = obs.wait_message(measured_under_load, 60, "a telemetry window measured under load")
        assert msg is not None
        rec = json.loads(msg.payload)
        e = rec["energy"]
        assert e["measured"] is True
        assert e["source"].startswith("um25c:")
        assert e["idle_w"] == pytest.approx(IDLE_W, rel=0.05)
        assert e["avg_w"] == pytest.approx(LOAD_W, rel=0.1)
        span = e["t1"] - e["t0"]
        # gross and net energy per inference follow from the window's own figures
        assert e["mj_per_inference"] == pytest.approx(e["avg_w"] * span / e["inferences"] * 1000)
        assert e["mj_per_inference_net"] == pytest.approx(
            (e["avg_w"] - e["idle_w"]) * span / e["inferences"] * 1000
        )
        assert e["inferences"] == rec["inferences"]
        # throttling and thermal context ride along with every window
        assert "thermal" in rec and "throttled_now" in rec["thermal"]

        sim.unplug()
        seen_after = len(obs.messages)

        def missing_but_serving(m) -> bool:
            if not m.topic.endswith("/telemetry") or obs.messages.index(m) < seen_after:
                return False
            rec = json.loads(m.payload)
            e = rec.get("energy") or {}
            return bool(rec["inferences"] > 0 and e.get("missing_reason"))

        gone = obs.wait_message(missing_but_serving, 60, "a window with the meter unplugged")
        assert gone is not None
        e = json.loads(gone.payload)["energy"]
        assert e["mj_per_inference"] is None
