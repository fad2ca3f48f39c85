"""The fleet simulator against a real Mosquitto: births, wills, gapless telemetry, and pushes from
the real host Pusher that the simulated devices verify and commit, reject or roll back."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.wire.chunks import encode_chunk
from agent.wire.manifest_signing import model_fields, sign_manifest
from agent.wire.messages import State, Telemetry
from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.push import Pusher
from deploy.sim.fleet import FleetSpec, SimFleet
from tests.broker import Broker
from tests.mqtt_util import Collector, wait_until


def _spec(broker: Broker, n: int, **kw: Any) -> FleetSpec:
    return FleetSpec("127.0.0.1", broker.port, 0, n, n, **kw)


@pytest.fixture
def run_fleet() -> Iterator[Any]:
    running: list[tuple[SimFleet, threading.Thread]] = []

    def start(spec: FleetSpec) -> SimFleet:
        fleet = SimFleet(spec)
        t = threading.Thread(target=fleet.run, daemon=True)
        t.start()
        running.append((fleet, t))
        wait_until(lambda: fleet.connected() == spec.count, 20, "every device connected")
        return fleet

    yield start
    for fleet, t in running:
        fleet.stop.set()
        t.join(10)
        fleet.close()


def _signed(keys_dir: Path, data: bytes, release: int, chunk_size: int = 1024) -> Any:
    fields = model_fields(data, chunk_size) | {
        "name": "m",
        "version": "1",
        "release": release,
        "variant": {"recipe": "int8", "dtype": "int8", "delegate": "auto"},
    }
    return sign_manifest(fields, load_private(keys_dir))


def test_births_wills_and_gapless_telemetry(broker: Broker, run_fleet: Any) -> None:
    spec = _spec(broker, 30, window_s=0.5, classes=("rpi4b-cpu/ai-edge-litert=2", "rpi5-cpu/x"))
    fleet = run_fleet(spec)
    watch = Collector(
        "127.0.0.1", broker.port, ["edgeloop/dev/+/state", "edgeloop/dev/+/telemetry"]
    )
    watch.start()
    try:
        births = watch.wait_count(lambda m: m.retain and m.topic.endswith("/state"), 30)
        classes = {State.from_json(m.payload).hardware_class for m in births}
        assert classes == {"rpi4b-cpu", "rpi5-cpu"}
        watch.wait_count(lambda m: m.topic.endswith("/telemetry"), 30 * 4, timeout=20)
        seqs: dict[str, list[int]] = {}
        for m in list(watch.messages):
            if m.topic.endswith("/telemetry"):
                seqs.setdefault(m.topic, []).append(Telemetry.from_json(m.payload).seq)
        assert len(seqs) == 30
        for got in seqs.values():
            assert got == list(range(got[0], got[0] + len(got))), got  # gapless, in order
        # a device cut off without DISCONNECT: the broker publishes its will
        fleet.mux.drop(fleet.links[3], 60)
        will = watch.wait_for(
            lambda m: m.topic == "edgeloop/dev/sim-00003/state" and b"lost" in m.payload
        )
        assert State.from_json(will.payload).online is False
    finally:
        watch.stop()


def _push(broker: Broker, device: str, tmp_path: Path, signed: Any, data: bytes) -> Any:
    model = tmp_path / f"{signed.manifest.sha256[:8]}.bin"
    model.write_bytes(data)
    with Pusher(BrokerAddress("127.0.0.1", broker.port), device) as pusher:
        return pusher.push(model, signed, timeout_s=20)


def test_push_commits_and_the_birth_names_the_model(
    broker: Broker, run_fleet: Any, keys_dir: Path, tmp_path: Path
) -> None:
    fleet = run_fleet(_spec(broker, 3, trust=(str(keys_dir / "edgeloop.pub"),)))
    data = os.urandom(40_000)
    result = _push(broker, "sim-00001", tmp_path, _signed(keys_dir, data, 5), data)
    assert (result.outcome, result.ok) == ("committed", True)
    assert result.chunks_sent == 40  # every chunk once: no re-requests on a clean link
    dev = fleet.devices[1]
    assert dev.current is not None and dev.current.sha256 == hashlib.sha256(data).hexdigest()
    assert fleet.devices[0].current is None
    again = _push(broker, "sim-00001", tmp_path, _signed(keys_dir, data, 5), data)
    assert again.outcome == "duplicate"  # same release: the replay rule of the real store


def test_unknown_key_is_rejected_and_nothing_changes(
    broker: Broker, run_fleet: Any, keys_dir: Path, tmp_path: Path
) -> None:
    fleet = run_fleet(_spec(broker, 1))  # trusts no key
    data = os.urandom(5000)
    result = _push(broker, "sim-00000", tmp_path, _signed(keys_dir, data, 1), data)
    assert (result.outcome, result.code) == ("rejected", "unknown_key")
    assert fleet.devices[0].current is None and fleet.devices[0].transfer is None


def test_corrupt_chunk_is_refused_and_fetched_again(
    broker: Broker, run_fleet: Any, keys_dir: Path
) -> None:
    fleet = run_fleet(_spec(broker, 1, trust=(str(keys_dir / "edgeloop.pub"),)))
    data = os.urandom(8192)
    signed = _signed(keys_dir, data, 2)
    dev, link = fleet.devices[0], fleet.links[0]
    outs = dev.on_message(
        dev.topics.cmd("deploy"),
        json.dumps({"id": "c1", "args": {"manifest": signed.to_dict()}}).encode(),
        time.time(),
    )
    assert dev.transfer is not None and any(o.topic == dev.topics.need for o in outs)
    bad = bytearray(data[:1024])
    bad[0] ^= 1
    dev.on_message(
        dev.topics.chunks(signed.manifest.sha256),
        encode_chunk(signed.manifest.sha256, 0, bytes(bad)),
        time.time(),
    )
    assert dev.transfer.bad_chunks == 1 and 0 not in dev.transfer.have
    del link


@pytest.mark.parametrize(
    ("rates", "outcome", "code"),
    [
        ({"install_fail": 1.0}, "rolled_back", "probe_failed"),
        ({"trial_fail": 1.0, "trial_s": 0.2}, "rolled_back", "health_failed"),
    ],
)
def test_configured_failures(
    broker: Broker,
    run_fleet: Any,
    keys_dir: Path,
    tmp_path: Path,
    rates: dict[str, float],
    outcome: str,
    code: str,
) -> None:
    fleet = run_fleet(_spec(broker, 2, trust=(str(keys_dir / "edgeloop.pub"),), rates=rates))
    data = os.urandom(10_000)
    result = _push(broker, "sim-00000", tmp_path, _signed(keys_dir, data, 3), data)
    assert (result.outcome, result.code) == (outcome, code)
    assert fleet.devices[0].current is None  # the last good model (none) is kept


def test_offline_mid_pull_fires_the_will_then_resumes(
    broker: Broker, run_fleet: Any, keys_dir: Path, tmp_path: Path
) -> None:
    rates = {"offline": 1.0, "offline_s": 1.0}
    fleet = run_fleet(_spec(broker, 1, trust=(str(keys_dir / "edgeloop.pub"),), rates=rates))
    watch = Collector("127.0.0.1", broker.port, ["edgeloop/dev/sim-00000/state"]).start()
    try:
        data = os.urandom(30_000)
        result = _push(broker, "sim-00000", tmp_path, _signed(keys_dir, data, 4), data)
        assert result.outcome == "committed"
        assert any(b'"lost"' in m.payload for m in watch.messages)  # the will was published
        assert fleet.mux.links[0].connected
    finally:
        watch.stop()
