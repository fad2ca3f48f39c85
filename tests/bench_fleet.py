"""Fleet-scale ingest benchmark for issue 12 (not collected by pytest).

    PYTHONPATH=. /work/main/.venv/bin/python tests/bench_fleet.py [--devices 5000]
        [--window 1] [--seconds 60] [--processes 3] [--workers 1] [--json OUT]
        [--engine sqlite|postgresql] [--registry postgresql://...]
    PYTHONPATH=. /work/main/.venv/bin/python tests/bench_fleet.py --egress [--devices 200]
        [--model-kib 1024] [--processes 2] [--json OUT]

A real Mosquitto (tests.broker), ``--devices`` simulated devices (deploy.sim, ``--processes``
worker processes, one MQTT connection per device) publishing one telemetry window per
``--window`` seconds, and ``--workers`` real ``edge-deploy collect`` processes on one registry:
a SQLite file, or with ``--engine postgresql`` a database on a PostgreSQL cluster the bench
makes (tests.postgres; fsync on) or the database of ``--registry URL``. After every device is
connected and a 10 s warm-up, the run lasts ``--seconds``; then the simulator stops cleanly and
the workers drain. Figures: windows published and stored during the run, lost windows
(published but never stored, and gaps in seq per device at the registry), ingest lag p50/p99
(commit time - window timestamp, from the workers' counters), worker CPU seconds and peak RSS
(from /proc), simulator CPU, registry size. One run.
``--rollout`` runs the rollout section instead (tests/bench_fleet_rollout.py: 1,000 devices,
install failures at 0 %, 5 % and 30 %).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.windows import gaps, window_counts
from deploy.sim.fleet import FleetSpec
from deploy.sim.launch import Launcher
from tests.broker import Broker
from tests.mqtt_util import read_until
from tests.postgres import PgServer

CLI = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())"]


def _proc_stat(pid: int) -> tuple[float, float]:
    """(cpu seconds, RSS MiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu, rss


def _follow(p: subprocess.Popen[str], last: list[dict[str, Any]], k: int) -> None:
    """Read a worker's counter lines as they come (a full pipe would block the worker)."""
    assert p.stdout is not None
    os.set_blocking(p.stdout.fileno(), True)
    for line in p.stdout:
        try:
            last[k] = json.loads(line)
        except ValueError:
            continue


def _stored(registry: Path | str) -> int:
    with Registry(registry) as reg:
        return sum(n for n, _lo, _hi in window_counts(reg).values())


def _sizes(reg: Registry, work: Path) -> tuple[float, int]:
    """(registry MiB, bytes of the telemetry table): the file (+ WAL), or the database."""
    if reg.engine == "sqlite":
        total = sum(f.stat().st_size for f in work.glob("fleet.sqlite*"))
        return total / 2**20, reg.path.stat().st_size
    row = reg._all(
        "SELECT pg_database_size(current_database()), pg_total_relation_size('telemetry_windows')"
    )[0]
    return int(row[0]) / 2**20, int(row[1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Mosquitto inherits it
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    pg = PgServer().start() if args.engine == "postgresql" and not args.registry else None
    registry: Path | str = work / "fleet.sqlite"
    if args.engine == "postgresql":
        registry = pg.database("bench") if pg is not None else args.registry
    Registry(registry).close()
    # the backlog waits at the broker (backpressure): no cap on its queue for the worker
    broker = Broker(work / "broker", extra_conf=["max_queued_messages 2000000"]).start()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    workers = []
    last: list[dict[str, Any]] = []  # each worker's latest counters line
    for _ in range(args.workers):
        p = subprocess.Popen(
            [*CLI, "collect", "--broker", broker.url, "--registry", str(registry), "--stats", "1"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        read_until(p, '{"started"', 30)
        workers.append(p)
        last.append({})
        threading.Thread(target=_follow, args=(p, last, len(last) - 1), daemon=True).start()
    n = args.devices
    spec = FleetSpec("127.0.0.1", broker.port, 0, n, n, window_s=args.window)
    sim = Launcher(spec, args.processes).start()
    out: dict[str, Any] = {
        "devices": n,
        "engine": args.engine,
        "window_s": args.window,
        "workers": args.workers,
        "sim_processes": args.processes,
    }
    try:
        t0 = time.monotonic()
        assert sim.wait_connected(300), sim.counters()
        out["connect_s"] = round(time.monotonic() - t0, 1)
        time.sleep(10)  # warm-up: births stored, the schedule steady
        c0, s0, w0 = sim.counters(), _stored(registry), [_proc_stat(p.pid) for p in workers]
        t1 = time.monotonic()
        peak = [0.0] * len(workers)
        while time.monotonic() - t1 < args.seconds:
            time.sleep(1)
            for k, p in enumerate(workers):
                peak[k] = max(peak[k], _proc_stat(p.pid)[1])
        c1, s1, w1 = sim.counters(), _stored(registry), [_proc_stat(p.pid) for p in workers]
        dt = time.monotonic() - t1
        sent = sim.stop()
        t2 = time.monotonic()
        at_stop = _stored(registry)
        deadline = t2 + args.drain_timeout
        while _stored(registry) < sent["windows"] and time.monotonic() < deadline:
            time.sleep(1)
        drain_s = time.monotonic() - t2
        out |= {
            "drained": _stored(registry) >= sent["windows"],
            "backlog_at_stop": sent["windows"] - at_stop,
            "drain_rate_per_s": round((_stored(registry) - at_stop) / max(drain_s, 1e-9)),
            "published_per_s": round((c1["windows"] - c0["windows"]) / dt),
            "stored_per_s": round((s1 - s0) / dt),
            "drain_after_stop_s": round(drain_s, 1),
            "published_total": sent["windows"],
            "worker_cpu_s": [round(b[0] - a[0], 1) for a, b in zip(w0, w1, strict=True)],
            "worker_peak_rss_mb": [round(x, 1) for x in peak],
            "sim_cpu_s_total": sent["cpu_s"],
            "sim_max_rss_mb_sum": sent["max_rss_mb"],
            "run_s": round(dt, 1),
        }
    finally:
        for p in workers:
            p.terminate()
        for p in workers:
            p.wait(60)
        time.sleep(0.5)
        finals = list(last)
        broker.stop(check=False)
    with Registry(registry) as reg:
        counts = window_counts(reg)
        missing = gaps(reg)
        size_mb, window_bytes = _sizes(reg, work)
    if pg is not None:
        pg.stop()
    stored = sum(c[0] for c in counts.values())
    out |= {
        "stored_total": stored,
        "lost": max(0, out.get("published_total", 0) - stored) + sum(missing.values()),
        "devices_with_gaps": len(missing),
        "lag_p50_s": [f.get("lag_p50_s") for f in finals],
        "lag_p99_s": [f.get("lag_p99_s") for f in finals],
        "duplicates": [f.get("duplicates") for f in finals],
        "batches": [f.get("batches") for f in finals],
        "registry_mb": round(size_mb, 1),
        "bytes_per_window": round(window_bytes / max(1, stored)),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
    }
    return out


def run_egress(args: argparse.Namespace) -> dict[str, Any]:
    """``--egress``: host bytes published / model size for one wave to ``--devices``
    simulated devices, per-device pull against the shared stream (deploy.sim.egress)."""
    from deploy.keys import init_keys, load_private
    from deploy.mqtt import BrokerAddress
    from deploy.sim.egress import compare_egress
    from tests.delivery_helpers import model_bytes

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="bench-egress-"))
    init_keys(work / "keys")
    broker = Broker(work / "broker").start()
    try:
        out = compare_egress(
            BrokerAddress(broker.host, broker.port),
            load_private(work / "keys"),
            work / "keys" / "edgeloop.pub",
            devices=args.devices,
            data=model_bytes(args.model_kib * 1024),
            processes=args.processes,
        )
    finally:
        broker.stop(check=False)
    load = os.getloadavg()[0]
    return out | {"machine": f"{platform.machine()} {os.cpu_count()} cores, load {load:.1f}"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--egress", action="store_true", help="host egress of one wave instead")
    ap.add_argument("--model-kib", type=int, default=1024, help="--egress: the model's size")
    ap.add_argument("--rollout", action="store_true", help="the rollout section")
    ap.add_argument("--rates", default="0,0.05,0.3", help="--rollout: install-failure rates")
    ap.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--registry", default=None, help="with --engine postgresql: a database URL")
    args = ap.parse_args()
    if args.rollout:
        from tests import bench_fleet_rollout

        args.devices = 1000 if "--devices" not in sys.argv else args.devices
        out = bench_fleet_rollout.run(args)
    else:
        out = run_egress(args) if args.egress else run(args)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
