"""`edge-deploy collect` against a real Mosquitto and simulated devices: batched, acknowledged
after commit, nothing lost when the worker is SIGKILLed mid-stream; `fleet --json` counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.windows import gaps, window_counts
from deploy.sim.fleet import FleetSpec
from deploy.sim.launch import Launcher
from tests.broker import Broker
from tests.mqtt_util import read_until, wait_until

CLI = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())"]


def _collect(broker: Broker, registry: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "collect", "--broker", broker.url, "--registry", str(registry), "--stats", "0.5"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    read_until(proc, '{"started"', 20)
    return proc


def _stored(registry: Path) -> int:
    with Registry(registry) as reg:
        return sum(n for n, _lo, _hi in window_counts(reg).values())


def test_sigkill_mid_stream_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    registry = tmp_path / "fleet.sqlite"
    Registry(registry).close()
    n = 60
    spec = FleetSpec("127.0.0.1", broker.port, 0, n, n, window_s=0.5)
    worker = _collect(broker, registry)
    try:
        with Launcher(spec, 1) as sim:
            assert sim.wait_connected(30)
            wait_until(lambda: _stored(registry) >= 3 * n, 30, "windows stored")
            worker.send_signal(signal.SIGKILL)  # mid-stream: a backlog in flight, unacked
            worker.wait(10)
            seen_before = _stored(registry)
            wait_until(lambda: sim.counters()["windows"] >= seen_before + 3 * n, 30, "backlog")
            worker = _collect(broker, registry)  # the same slot: the same persistent session
            wait_until(lambda: _stored(registry) > seen_before + 3 * n, 30, "redelivery")
            sent = sim.stop()
        assert sent["windows"] > seen_before + 3 * n
        wait_until(lambda: _stored(registry) == sent["windows"], 30, "every window stored")
        with Registry(registry) as reg:
            counts = window_counts(reg)
            assert gaps(reg) == {}
            assert len(counts) == n and all(lo == 0 for _n, lo, _hi in counts.values())
            assert all(d.hardware_class == "rpi4b-cpu/ai-edge-litert" for d in reg.devices())
    finally:
        worker.terminate()
        worker.wait(10)
    final = [json.loads(x) for x in (worker.stdout.read() if worker.stdout else "").splitlines()]
    assert final[-1]["final"] and final[-1]["duplicates"] >= 0


def test_fleet_json_lists_windows_and_last_seq(broker: Broker, tmp_path: Path) -> None:
    registry = tmp_path / "fleet.sqlite"
    Registry(registry).close()
    worker = _collect(broker, registry)
    spec = FleetSpec("127.0.0.1", broker.port, 0, 5, 5, window_s=0.5)
    try:
        with Launcher(spec, 1) as sim:
            assert sim.wait_connected(30)
            wait_until(lambda: _stored(registry) >= 10, 30, "windows stored")
            sent = sim.stop()
        wait_until(lambda: _stored(registry) == sent["windows"], 30, "every window stored")
    finally:
        worker.terminate()
        worker.wait(10)
    out = subprocess.run(
        [*CLI, "fleet", "--registry", str(registry), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    assert sorted(r["id"] for r in rows) == [f"sim-0000{i}" for i in range(5)]
    assert sum(r["windows"] for r in rows) == sent["windows"]
    for r in rows:
        assert r["last_seq"] == r["windows"] - 1 and r["class"] == "rpi4b-cpu/ai-edge-litert"
        assert r["online"] is False  # the simulator stopped cleanly: retained "stopped"
