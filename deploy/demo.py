"""`edge-deploy demo`: a whole fleet on one machine.

Starts an embedded Mosquitto, makes a signing key, starts real agents as subprocesses that
present different hardware (captured trees of real boards, different thread limits), pushes the
digits model to each through the real protocol, lets them serve a steady load, and prints the
fleet table. Everything it makes lives under --workdir (a temporary directory by default).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.errors import EdgeloopError
from deploy.broker import EmbeddedBroker
from deploy.fleet import FleetWatcher, format_table
from deploy.keys import init_keys, load_private
from deploy.push import BrokerAddress, PushResult, push_model

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoDevice:
    device_id: str
    hw_tree: str  # under tests/hwtrees
    threads: int


DEVICES = (
    DemoDevice("pi4-01", "rpi4b", 1),
    DemoDevice("pi5-01", "rpi5", 2),
    DemoDevice("nuc-coral-01", "x86-m2-coral", 2),
)


def _find_models() -> Path:
    models = REPO / "tests" / "models"
    if not (models / "digits_fp32.tflite").is_file():
        raise EdgeloopError(
            f"the demo models are not at {models}",
            hint="run the demo from a checkout of edgeloop (make demo)",
        )
    return models


@contextmanager
def _agents(
    workdir: Path, broker: EmbeddedBroker, trust_key: Path, devices: tuple[DemoDevice, ...]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for d in devices:
            tree = REPO / "tests" / "hwtrees" / d.hw_tree
            state = workdir / "devices" / d.device_id
            state.mkdir(parents=True, exist_ok=True)
            cfg = state / "agent.toml"
            cfg.write_text(
                f'device_id = "{d.device_id}"\nstate_dir = "{state / "state"}"\n'
                f'hw_root = "{tree if tree.is_dir() else "/"}"\ntrust_keys = ["{trust_key}"]\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                f"[runtime]\nthreads = {d.threads}\n"
                "[telemetry]\ninterval_s = 2.0\n[loadgen]\nrate_hz = 20.0\n"
                "[health]\nmin_inferences = 30\nmin_seconds = 1.0\n"
            )
            log_file = (state / "agent.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "agent", "-v", "run", "--config", str(cfg)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                    env=dict(os.environ) | {"PYTHONUNBUFFERED": "1"},
                )
            )
            log_file.close()
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_online(watcher: FleetWatcher, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watcher.pump(0.3)
        online = {k for k, v in watcher.devices.items() if v.online}
        if ids <= online:
            return
    missing = ids - {k for k, v in watcher.devices.items() if v.online}
    raise EdgeloopError(f"devices did not come online: {sorted(missing)}")


def run_demo(workdir: Path | None = None, *, out: TextIO = sys.stdout) -> int:
    models = _find_models()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgeloop-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    broker = EmbeddedBroker(workdir / "broker").start()
    address = BrokerAddress("127.0.0.1", broker.port)
    print(f"broker: mosquitto on {broker.url} (workdir {workdir})", file=out)
    try:
        keys_dir = workdir / "keys"
        pub = init_keys(keys_dir) if not (keys_dir / "edgeloop.pub").exists() else None
        trust = pub or keys_dir / "edgeloop.pub"
        key = load_private(keys_dir)
        watcher = FleetWatcher(address)
        with _agents(workdir, broker, trust, DEVICES), watcher.running():
            _wait_online(watcher, {d.device_id for d in DEVICES}, 60)
            print(f"{len(DEVICES)} agents online; pushing digits int8 to each", file=out)
            model = models / "digits_int8.tflite"

            def push(d: DemoDevice) -> PushResult:
                return push_model(
                    model, d.device_id, address, key, name="digits", version="1",
                    recipe="int8", progress=None, timeout_s=120,
                )  # fmt: skip

            with ThreadPoolExecutor(len(DEVICES)) as pool:
                results = list(pool.map(push, DEVICES))
            for d, r in zip(DEVICES, results, strict=True):
                print(f"  {d.device_id}: {r.outcome} in {r.seconds:.1f}s ({r.message})", file=out)
            watcher.pump(5.0)  # a couple of telemetry windows under the load generator
            print("", file=out)
            print(format_table(watcher.rows()), file=out)
        ok = all(r.ok for r in results)
        print(f"\ndemo {'finished' if ok else 'FAILED'} in {time.monotonic() - t0:.1f}s", file=out)
        return 0 if ok else 1
    finally:
        broker.stop()
        if tmp is not None:
            tmp.cleanup()
