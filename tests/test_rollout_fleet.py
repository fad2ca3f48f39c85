"""Rollouts across simulated devices on a real Mosquitto (issue 12, item 5, at CI size): the
abort at the failure threshold with nobody notified after it and every moved device rolled back
with a new signed manifest of its old artifact; and a clean rollout reaching 100 %."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.fleet.registry import Registry
from deploy.fleet.rollout import RolloutRunner
from deploy.fleet.rollout_plan import RolloutPolicy
from deploy.fleet.rollout_progress import Progress
from deploy.loop.service import current_variant
from deploy.sim.fleet import SimFleet
from tests import rollout_fleet as rf
from tests.broker import Broker
from tests.mqtt_util import wait_until

N = 150


@pytest.fixture
def fleet(broker: Broker, keys_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """``fleet(rates) -> (host, old, new, sim)``: N simulated devices on the old variant."""
    started: list[tuple[SimFleet, threading.Thread, rf.Host]] = []
    registry = Registry(tmp_path / "fleet.sqlite")
    old, new = rf.add_variants(registry, tmp_path / "variants")

    def start(rates: dict[str, float]) -> tuple[rf.Host, Any, Any, SimFleet]:
        if "seed" in rates:  # -1: a seed under which the canary commits
            rates = rates | {"seed": rf.canary_commits_seed(new, rates["install_fail"])}
        sim = SimFleet(rf.fleet_spec(broker.port, N, keys_dir, old, rates))
        t = threading.Thread(target=sim.run, daemon=True)
        t.start()
        wait_until(lambda: sim.connected() == N, 30, "every simulated device connected")
        host = rf.start_host(registry, broker.port, keys_dir, N, 30)
        started.append((sim, t, host))
        return host, old, new, sim

    yield start
    for sim, t, host in started:
        host.collector.stop()
        sim.stop.set()
        t.join(10)
        sim.close()
    registry.close()


def _runner(host: rf.Host, new: Any, devices: list[str], **kw: Any) -> RolloutRunner:
    previous = {d: current_variant(host.registry, d) for d in devices}
    policy = RolloutPolicy(canary=1, waves=("10%", "100%"), max_failure_ratio=0.2)
    return RolloutRunner(host.deployer, new, previous, class_id=rf.CLASS, policy=policy, **kw)


def test_abort_at_threshold_notifies_nobody_after_and_rolls_back(
    fleet: Any, broker: Broker
) -> None:
    rate = 0.3
    host, old, new, sim = fleet({"install_fail": rate, "trial_s": 0.2, "seed": -1})
    devices = sorted(d.id for d in host.registry.devices(rf.CLASS))
    observer = rf.deploy_observer(broker.port)
    seen: list[Progress] = []
    try:
        runner = _runner(host, new, devices, max_in_flight=5, on_progress=seen.append)
        out = runner.run(devices)
        assert out.state == "aborted", out.reason
        assert out.aborted_at is not None and "failed" in out.reason
        wait_until(lambda: len(rf.deploys_seen(observer)) >= len(runner.sent), 10, "commands")
        got = rf.deploys_seen(observer)
    finally:
        observer.stop()
    to_new = [c for c in got if c.sha256 == new.sha256]
    # nobody is notified of the new artifact after the abort: every such command was made
    # before it, and they went exactly to the devices the runner announced before it
    assert to_new and all(c.ts <= out.aborted_at for c in to_new)
    sent_new = {d for d, sha, _t in runner.sent if sha == new.sha256}
    assert {c.device for c in to_new} == sent_new
    assert out.withdrawn and not sent_new & set(out.withdrawn)
    assert len(sent_new) < 16  # canary + part of the 15-device wave 1: wave 2 never started
    # the abort came when the failures crossed 20 % of the 16 devices notified (canary, wave 1)
    m = re.match(r"(\d+) of (\d+) notified devices failed", out.reason)
    assert m is not None and int(m[2]) == 16 and int(m[1]) == 4, out.reason
    # every device that took the new artifact was rolled back: a new signed manifest of the
    # old artifact with a higher release, which the simulated devices verified and committed
    release_new = max(c.release for c in to_new)
    back = [c for c in got if c.sha256 == old.sha256]
    assert {c.device for c in back} == set(out.committed)
    assert all(c.release > release_new for c in back)
    assert set(out.rolled_back) == set(out.committed)
    assert all(how == "committed" for how in out.rolled_back.values())
    assert all(d.current is not None and d.current.sha256 == old.sha256 for d in sim.devices)
    assert seen and seen[-1].state == "aborted" and seen[-1].rolled_back == len(out.committed)
    rows = {r.device: r.state for r in host.registry.rollout_devices(out.rollout_id)}
    assert all(rows[d] == "rolled_back" for d in out.committed)
    assert all(rows[d] == "withdrawn" for d in out.withdrawn)


def test_clean_rollout_reaches_every_device(fleet: Any) -> None:
    host, _old, new, sim = fleet({"trial_s": 0.2})
    devices = sorted(d.id for d in host.registry.devices(rf.CLASS))
    seen: list[Progress] = []
    out = _runner(host, new, devices, on_progress=seen.append).run(devices)
    assert (out.state, len(out.committed), out.failed) == ("done", N, {})
    assert all(d.current is not None and d.current.sha256 == new.sha256 for d in sim.devices)
    last = seen[-1]
    assert [w.size for w in last.waves] == [1, 15, N - 16]
    assert sum(w.done for w in last.waves) == N and last.state == "done"
