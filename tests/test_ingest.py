"""`edge-deploy collect` against a real Mosquitto and simulated devices: batched, acknowledged
after commit, nothing lost when the worker is SIGKILLed mid-stream; two workers on one
PostgreSQL registry split the stream and lose nothing when one is SIGKILLed; `fleet --json`
counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from deploy.fleet.registry import Registry
from deploy.fleet.windows import gaps, window_counts
from deploy.sim.fleet import FleetSpec
from deploy.sim.launch import Launcher
from tests import records
from tests.broker import Broker
from tests.mqtt_util import read_until, wait_until

CLI = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())"]


def _collect(broker: Broker, registry: Path | str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "collect", "--broker", broker.url, "--registry", str(registry), "--stats", "0.5"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    read_until(proc, '{"started"', 20)
    return proc


def _stored(registry: Path | str) -> int:
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


class Counters:
    """A worker's latest counter line, read as it comes (a full pipe would block it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.last: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), True)  # read_until left it non-blocking
        for line in proc.stdout:
            try:
                self.last = json.loads(line)
            except ValueError:
                continue

    def stored(self) -> int:
        return int(self.last.get("stored", 0))


@pytest.mark.postgres
def test_two_workers_on_postgres_split_the_stream_and_a_sigkill_loses_nothing(
    broker: Broker, pg_url: str
) -> None:
    Registry(pg_url).close()
    n = 200
    spec = FleetSpec("127.0.0.1", broker.port, 0, n, n, window_s=1.0)
    workers = [_collect(broker, pg_url), _collect(broker, pg_url)]  # no flags: slots 0 and 1
    counters = [Counters(w) for w in workers]
    try:
        with Launcher(spec, 2) as sim:
            assert sim.wait_connected(60)
            wait_until(lambda: _stored(pg_url) >= 3 * n, 60, "windows stored")
            wait_until(lambda: all(c.stored() > n // 2 for c in counters), 30, "both store")
            workers[1].send_signal(signal.SIGKILL)  # mid-stream, with unacknowledged windows
            workers[1].wait(10)
            seen_before = _stored(pg_url)
            wait_until(lambda: sim.counters()["windows"] >= seen_before + 3 * n, 60, "backlog")
            workers[1] = _collect(broker, pg_url)  # slot 1 again: its persistent session
            counters[1] = Counters(workers[1])
            wait_until(lambda: counters[1].stored() > 0, 60, "the restarted worker stores")
            sent = sim.stop()
        wait_until(lambda: _stored(pg_url) == sent["windows"], 60, "every window stored")
        with Registry(pg_url) as reg:
            counts = window_counts(reg)
            assert gaps(reg) == {}
            assert len(counts) == n and all(lo == 0 for _n, lo, _hi in counts.values())
            assert len(reg.devices()) == n
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            assert w.wait(20) == 0


@pytest.mark.postgres
def test_a_dropped_postgres_connection_costs_one_retry_not_the_batch(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from agent.mqtt.types import IncomingMessage
    from deploy.fleet.ingest import Ingest
    from deploy.mqtt import BrokerAddress

    def batch(seqs: range) -> list[IncomingMessage]:
        topic = "edgeloop/dev/pi-01/telemetry"
        return [
            IncomingMessage(topic, json.dumps(records.telemetry(s, 1000.0)).encode(), 1, False)
            for s in seqs
        ]

    with Registry(pg_url) as reg:
        ingest = Ingest(reg, BrokerAddress("127.0.0.1", 1), client_id="t")  # never started
        ingest.apply(batch(range(0, 10)))
        with psycopg.connect(pg_url, autocommit=True) as admin:  # the server drops the session
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid != pg_backend_pid()"
            )
        ingest.apply(batch(range(10, 20)))  # fails once, reconnects, commits
        assert window_counts(reg) == {"pi-01": (20, 0, 19)}
        assert ingest.stats.stored == 20 and ingest.stats.received == 20
    assert "retrying" in caplog.text
