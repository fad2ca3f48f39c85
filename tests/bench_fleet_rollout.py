"""The rollout section of tests/bench_fleet.py (issue 12, item 5): ``--rollout``.

    PYTHONPATH=. /work/main/.venv/bin/python tests/bench_fleet.py --rollout [--devices 1000]
        [--processes 3] [--rates 0,0.05,0.3] [--json OUT]

For each install-failure rate: a fresh registry (digits fp32 and int8), ``--devices`` simulated
devices in ``--processes`` processes on one real Mosquitto, all serving fp32 at start, and the
real ``edge-deploy rollout digits --variant int8`` (canary 1, waves 25%,100%, a wave needs 90 %
committed, abort above 20 % of the notified failed) as a subprocess, its progress lines kept.
An observer on the broker records every deploy command the devices receive and every retained
state. Figures: outcome, time to the end (to
100 % for the 0 % case), the host process's CPU seconds (collector and rollout together),
devices notified of int8, commands made after the abort (must be 0), devices rolled back and
the devices serving fp32 at the end.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.wire.messages import State
from deploy.fleet.registry import Registry
from deploy.keys import init_keys
from deploy.sim.launch import Launcher
from tests import mqtt_util
from tests import rollout_fleet as rf
from tests.broker import Broker

CLI = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())"]


def _serving(observer: mqtt_util.Collector) -> dict[str, str | None]:
    """device -> sha256 its latest retained state names."""
    out: dict[str, str | None] = {}
    with observer.lock:
        messages = list(observer.messages)
    for m in messages:
        st = State.from_json(m.payload)
        if st.online:
            out[m.topic.split("/")[2]] = st.model.sha256 if st.model else None
    return out


def one_rate(broker: Broker, work: Path, n: int, processes: int, rate: float) -> dict[str, Any]:
    keys = work / "keys"
    init_keys(keys)
    registry = work / "fleet.sqlite"
    with Registry(registry) as reg:
        old, new = rf.add_variants(reg, work / "variants")
    rates = {"install_fail": rate, "trial_s": 1.0}
    if rate > 0:  # the canary commits: the 5 % case goes on, the 30 % one aborts in a wave
        rates["seed"] = rf.canary_commits_seed(new, rate)
    spec = rf.fleet_spec(broker.port, n, keys, old, rates)
    states = mqtt_util.Collector("127.0.0.1", broker.port, ["edgeloop/dev/+/state"]).start()
    deploys = rf.deploy_observer(broker.port)
    sim = Launcher(spec, processes).start()
    try:
        assert sim.wait_connected(300), sim.counters()
        with Registry(registry) as reg:  # what a running `edge-deploy collect` would know
            rf.start_host(reg, broker.port, keys, n, 300).collector.stop()
        cmd = [*CLI, "rollout", "digits", "--variant", "int8", "--class", rf.CLASS,
               "--registry", str(registry), "--keys", str(keys), "--broker", broker.url,
               "--min-devices", str(n), "--wait-devices", "120", "--success-ratio", "0.9",
               "--json"]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            raise RuntimeError(f"edge-deploy rollout exited {proc.returncode}: {proc.stderr}")
        out = json.loads(proc.stdout)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        aborted = out["state"] == "aborted"
        expect = old.sha256 if aborted else new.sha256
        # aborted: every device back on (or still on) the old model; else every commit on the
        # new one (a device whose install failed stays on the old)
        want = n if aborted else len(out["committed"])
        mqtt_util.wait_until(
            lambda: sum(s == expect for s in _serving(states).values()) >= want,
            120, "every device on its final model", interval=0.5,
        )  # fmt: skip
        final = sum(s == expect for s in _serving(states).values())
        seen = rf.deploys_seen(deploys)
    finally:
        sim.stop()
        states.stop()
        deploys.stop()
    to_new = [c for c in seen if c.sha256 == new.sha256]
    aborted_at = out.get("aborted_at")
    lines = [x for x in proc.stderr.splitlines() if x.strip()[:1].isdigit()]
    return {
        "install_fail": rate,
        "state": out["state"],
        "reason": out["reason"],
        "rollout_s": out["seconds"],
        "command_wall_s": round(wall, 1),
        "host_cpu_s": round(cpu, 1),
        "committed": len(out["committed"]),
        "failed": len(out["failed"]),
        "notified_new": len({c.device for c in to_new}),
        "notified_after_abort": sum(c.ts > aborted_at for c in to_new) if aborted_at else 0,
        "withdrawn": len(out["withdrawn"]),
        "rolled_back": sum(v == "committed" for v in out["rolled_back"].values()),
        "rollback_commands": sum(c.sha256 == old.sha256 for c in seen),
        "devices_on_final_model": final,
        "final_model": "fp32 (old)" if expect == old.sha256 else "int8 (new)",
        "progress_lines": len(lines),
        "last_progress": lines[-1] if lines else None,
        "sim_cpu_s": sim.counters().get("cpu_s"),
    }


def run(args: Any) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Mosquitto inherits it
    root = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    cases = []
    for k, rate in enumerate(float(r) for r in args.rates.split(",")):
        broker = Broker(root / f"broker{k}").start()
        try:
            cases.append(one_rate(broker, root / f"case{k}", args.devices, args.processes, rate))
        finally:
            broker.stop(check=False)
        print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    return {
        "devices": args.devices,
        "sim_processes": args.processes,
        "policy": "canary 1, waves 25%,100%, success ratio 0.9, abort above 20 % failed, "
        "500 pushes in flight",
        "model": "digits int8 (24.9 KB) over fp32 (74.3 KB), 1 s trial on each device",
        "cases": cases,
        "machine": f"{os.uname().machine} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
    }
