"""One stream for many devices (issue 12 item 6), end to end on a real Mosquitto.

A wave of real agents (subprocesses) and simulated devices (deploy.sim, the agent's wire code)
gets its chunks from one shared stream ``edgeloop/models/{sha256}/chunks`` published once by
:func:`deploy.fleet.wave.push_wave` (a FleetPusher wave); each device repairs only what it
missed through its own ``need`` topic. The same faults as tests/test_delivery_faults.py and
tests/test_e2e_crash.py, now on the stream: link flaps (tests/tcp_proxy.py), a chunk corrupted
on the stream, a crash mid-transfer with a resume. And the host's egress for N simulated devices
is about the model's size once, not N times.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.wire.manifest import SignedManifest
from deploy.fleet.wave import WaveResult, push_wave
from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.sim.egress import compare_egress, wave_manifests
from deploy.sim.fleet import FleetSpec
from deploy.sim.launch import Launcher
from tests.agent_proc import Observer
from tests.broker import Broker
from tests.delivery_helpers import model_bytes, pointer_sha, store_problems
from tests.e2e_host import GATES, SeededDevice, agent_config, sign_model
from tests.models.bad_models import big_model
from tests.modelzoo import model
from tests.tcp_proxy import TcpProxy
from tests.test_e2e_crash import durable_chunks, requested

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

BIG = 5 * 2**20
SIMS = 3


@pytest.fixture
def sims(broker: Broker, keys_dir: Path) -> Iterator[list[str]]:
    """SIMS simulated devices trusting the test key, connected; their ids."""
    spec = FleetSpec(broker.host, broker.port, 0, SIMS, SIMS, telemetry=False,
                     trust=(str(keys_dir / "edgeloop.pub"),), id_prefix="sim-")  # fmt: skip
    with Launcher(spec, 1) as fleet:
        assert fleet.wait_connected(30), fleet.counters()
        yield [spec.device_id(i) for i in range(SIMS)]


@pytest.fixture
def proxy(broker: Broker) -> Iterator[TcpProxy]:
    with TcpProxy(broker.host, broker.port) as p:
        yield p


def address(broker: Broker) -> BrokerAddress:
    return BrokerAddress(broker.host, broker.port)


def signed_for(key: Any, data: bytes, devices: list[str], release: int = 2,
               chunk_size: int = 64 * 1024) -> dict[str, SignedManifest]:  # fmt: skip
    """Each device's own manifest of ``data`` (the real agents probe it: a real model)."""
    return {
        d: sign_model(data, key, release=release, chunk_size=chunk_size, targets={"devices": [d]})
        for d in devices
    }


def push(broker: Broker, data: bytes, manifests: dict[str, SignedManifest], key: Any,
         timeout_s: float = 120) -> WaveResult:  # fmt: skip
    """One wave with the test gates (so a deploy command signed with ``key``)."""
    return push_wave(address(broker), data, manifests, timeout_s=timeout_s, gates=GATES, key=key)


def assert_all_committed(wave: WaveResult) -> None:
    bad = {d: (r.outcome, r.message) for d, r in wave.results.items() if not r.ok}
    assert not bad, bad


def event(wave: WaveResult, device: str, kind: str) -> dict[str, Any]:
    found = [e for e in wave.results[device].events if e["kind"] == kind]
    assert found, (device, kind, [e["kind"] for e in wave.results[device].events])
    return found[0]


def test_a_wave_of_real_agents_and_simulated_devices_commits_from_one_stream(
    broker: Broker, keys_dir: Path, tmp_path: Path, start_agent: Any, sims: list[str]
) -> None:
    key = load_private(keys_dir)
    agents = [
        start_agent(d, extra_args=agent_config(tmp_path), ready_check=True)
        for d in ("pi-01", "pi-02")
    ]
    data = model("digits_int8").read_bytes()
    manifests = signed_for(key, data, [a.device_id for a in agents] + sims, release=1,
                           chunk_size=4096)  # fmt: skip
    wave = push(broker, data, manifests, key)
    assert_all_committed(wave)
    sha = wave.sha256
    for agent in agents:
        assert pointer_sha(agent.state_dir) == sha
        assert store_problems(agent.state_dir) == []
        assert event(wave, agent.device_id, "install_verified")["data"]["corrupt_chunks"] == 0
    # the model went out once for the five devices, and nobody needed a repair
    assert wave.stream_bytes == len(data), wave.to_dict()
    assert wave.egress_ratio <= 1.2, wave.to_dict()


def test_link_flaps_on_the_stream_are_repaired_through_need(
    seeded: SeededDevice, keys_dir: Path, proxy: TcpProxy, sims: list[str]
) -> None:
    data = big_model(BIG, seed=2)
    manifests = signed_for(seeded.key, data, ["pi-01", *sims])
    size = len(data)
    agent = seeded.start(extra_args=["--broker", proxy.url])
    pid = agent.pid
    start = proxy.bytes_down
    proxy.flap_at(start + k * size // 6 for k in range(1, 6))
    wave = push(seeded.broker, data, manifests, seeded.key)
    received = proxy.bytes_down - start
    assert proxy.flaps == 5 and proxy.connections >= 6
    assert_all_committed(wave)
    assert agent.pid == pid
    assert pointer_sha(agent.state_dir) == wave.sha256
    assert pointer_sha(agent.state_dir, "last_good") == seeded.old_sha
    stats = f"{received} bytes received for {size}; {wave.to_dict()}"
    assert received <= 1.2 * size, stats
    # what the flaps cost went to pi-01 alone, on its own topic: the stream chunks it missed
    # while its link was down (the stream does not wait for it), and repairs sent while it was
    # down again; the devices on a good link took the stream alone
    assert wave.repair_bytes == wave.results["pi-01"].bytes_sent, stats
    assert wave.stream_bytes == size, stats
    assert wave.egress_ratio < len(manifests), stats  # per-device pull: 4.0 without any flap


def test_a_chunk_corrupted_on_the_stream_is_refused_and_fetched_again(
    seeded: SeededDevice, proxy: TcpProxy, sims: list[str]
) -> None:
    data = big_model(BIG, seed=3)
    manifests = signed_for(seeded.key, data, ["pi-01", *sims])
    chunk = manifests["pi-01"].manifest.chunk_size
    agent = seeded.start(extra_args=["--broker", proxy.url])
    proxy.corrupt_publishes(1, min_size=chunk // 2)  # the first one is a stream chunk
    wave = push(seeded.broker, data, manifests, seeded.key)
    assert proxy.corrupted == 1
    assert_all_committed(wave)
    assert event(wave, "pi-01", "install_verified")["data"]["corrupt_chunks"] == 1
    assert wave.results["pi-01"].chunks_sent == 1, wave.to_dict()  # that chunk alone
    assert wave.repair_chunks == 1 and wave.stream_bytes == len(data), wave.to_dict()
    assert pointer_sha(agent.state_dir) == wave.sha256


def test_a_crash_mid_stream_resumes_with_only_the_missing_chunks(
    seeded: SeededDevice, sims: list[str]
) -> None:
    chunk = 32 * 1024
    data = big_model(2 * 2**20 - 8192, seed=1)
    manifests = signed_for(seeded.key, data, ["pi-01", *sims], chunk_size=chunk)
    nchunks = manifests["pi-01"].manifest.chunk_count
    sha = manifests["pi-01"].manifest.sha256
    agent = seeded.start(env={"EDGELOOP_CRASH_AT": "after_chunk:40"})
    result: list[WaveResult] = []
    pusher = threading.Thread(
        target=lambda: result.append(push(seeded.broker, data, manifests, seeded.key))
    )
    pusher.start()
    try:
        rc = agent.wait_exit(60)
        assert rc == -9, f"the agent did not die at chunk 40 (rc {rc}):\n{agent.log()}"
        assert store_problems(agent.state_dir) == []
        assert pointer_sha(agent.state_dir) == seeded.old_sha
        durable = durable_chunks(agent.state_dir, sha)
        with Observer(seeded.broker, ["edgeloop/dev/pi-01/need"]) as obs:
            agent.env = {}
            agent.start()  # resumes the staged transfer; the wave's host answers its needs
            pusher.join(120)
            assert not (requested(obs) & durable)
    finally:
        pusher.join(120)
    wave = result[0]
    assert_all_committed(wave)
    assert wave.results["pi-01"].chunks_sent <= nchunks - len(durable), wave.to_dict()
    assert pointer_sha(agent.state_dir) == sha
    assert store_problems(agent.state_dir) == []


def test_host_egress_for_n_simulated_devices_is_the_model_once_not_n_times(
    broker: Broker, keys_dir: Path
) -> None:
    n = 12
    out = compare_egress(address(broker), load_private(keys_dir), keys_dir / "edgeloop.pub",
                         devices=n, data=model_bytes(300_000), processes=1,
                         timeout_s=60)  # fmt: skip
    assert out["pull"]["committed"] == out["stream"]["committed"] == n, out
    assert out["pull"]["egress_ratio"] == pytest.approx(n), out
    assert out["stream"]["egress_ratio"] <= 1.2, out


def test_manifests_of_different_bytes_cannot_share_a_wave(broker: Broker, keys_dir: Path) -> None:
    key = load_private(keys_dir)
    a = wave_manifests(model_bytes(5000, 1), key, ["d1"], name="m", release=1)
    b = wave_manifests(model_bytes(5000, 2), key, ["d2"], name="m", release=1)
    with pytest.raises(ValueError, match="same bytes"):
        push_wave(address(broker), model_bytes(5000, 1), a | b, timeout_s=1)
