"""Several simulator worker processes (``python -m deploy.sim.fleet``) and their summed counters.

One process drives a few thousand connections at most on one core; the devices are split evenly
across ``processes`` workers, each printing JSON counter lines that :class:`Launcher` reads on a
thread per worker and sums on demand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from typing import IO, Any

from deploy.sim.fleet import FleetSpec


def _sum(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, bool):
            out[k] = out.get(k, True) and v
        elif isinstance(v, int | float):
            out[k] = round(out.get(k, 0) + v, 2)
        elif isinstance(v, dict):
            out[k] = _sum(out.get(k, {}), v)
    return out


class Launcher:
    """``with Launcher(spec, processes=4) as sim: sim.wait_connected(); ...``"""

    def __init__(self, spec: FleetSpec, processes: int = 1) -> None:
        n = max(1, min(processes, spec.count))
        self.specs = [
            dataclasses.replace(
                spec,
                first=spec.first + spec.count * k // n,
                count=spec.count * (k + 1) // n - spec.count * k // n,
            )
            for k in range(n)
        ]
        self.procs: list[subprocess.Popen[str]] = []
        self.latest: list[dict[str, Any]] = [{} for _ in self.specs]
        self._threads: list[threading.Thread] = []

    def start(self) -> Launcher:
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        for k, spec in enumerate(self.specs):
            proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.sim.fleet", spec.to_json()],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            self.procs.append(proc)
            assert proc.stdout is not None
            t = threading.Thread(target=self._read, args=(k, proc.stdout), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self, k: int, stream: IO[str]) -> None:
        for line in stream:
            try:
                self.latest[k] = json.loads(line)
            except ValueError:
                continue

    def counters(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for c in self.latest:
            total = _sum(total, c)
        return total

    def wait_connected(self, timeout: float = 60.0) -> bool:
        want = sum(s.count for s in self.specs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.counters().get("connected", 0) >= want:
                return True
            if any(p.poll() is not None for p in self.procs):
                return False
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._threads:
            t.join(5)
        return self.counters()

    def __enter__(self) -> Launcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
