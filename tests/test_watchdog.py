"""P13: supervision. The agent speaks systemd's notify protocol to ``NOTIFY_SOCKET``: READY=1
once started, WATCHDOG=1 at half of ``WATCHDOG_USEC`` only while its loops make progress,
STOPPING=1 on a clean stop. A hung inference worker (``EDGELOOP_HANG_AT``) stops the pings
while the core loop goes on. Also: a bad configuration exits 2 listing every problem, no
traceback.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.push import push_model
from tests.agent_proc import REPO, AgentProcess, observing, wait_for
from tests.broker import Broker, free_port
from tests.modelzoo import model


class NotifyListener:
    """The systemd side: an AF_UNIX datagram socket recording (monotonic time, message)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="nfy", dir="/tmp")  # sun_path is 108 bytes at most
        self.path = f"{self._dir}/notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if line in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


@pytest.mark.broker
def test_ready_then_watchdog_pings_then_stopping(
    notify: NotifyListener, start_agent: Callable[..., AgentProcess]
) -> None:
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
    agent = start_agent("pi-01", env=env)
    wait_for(lambda: notify.times("READY=1"), 10, "READY=1")
    wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 4, 10, "four WATCHDOG=1 pings")
    (ready,) = notify.times("READY=1")
    pings = notify.times("WATCHDOG=1")
    assert ready <= pings[0]
    # at half the interval: more than one ping per WATCHDOG_USEC, never a burst
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.3 < g < 1.0 for g in gaps), gaps
    assert agent.stop() == 0
    stopping = wait_for(lambda: notify.times("STOPPING=1"), 5, "STOPPING=1")
    assert stopping[0] >= pings[-1]


@pytest.mark.broker
def test_watchdog_pid_of_another_process_means_no_pings(
    notify: NotifyListener, start_agent: Callable[..., AgentProcess]
) -> None:
    """systemd sets WATCHDOG_PID to the main PID: a child that inherits it must not ping."""
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    agent = start_agent("pi-01", env=env)
    wait_for(lambda: notify.times("READY=1"), 10, "READY=1")
    # the agent's own birth after READY proves the core ran well past several intervals
    with observing(agent.broker, "pi-01") as obs:
        obs.wait_message(lambda m: m.topic.endswith("/telemetry"), 10, "telemetry")
        obs.wait_message(lambda m: m.topic.endswith("/telemetry"), 10, "more telemetry")
    assert notify.times("WATCHDOG=1") == []


@pytest.mark.broker
@pytest.mark.runtime
def test_a_hung_inference_worker_stops_the_pings(
    notify: NotifyListener,
    broker: Broker,
    keys_dir: Path,
    start_agent: Callable[..., AgentProcess],
) -> None:
    env = {
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "2000000",  # pings every 1 s; a loop stalled > 2 s is unhealthy
        "EDGELOOP_HANG_AT": "inference:250",  # well after the trial's ~50 inferences
    }
    agent = start_agent("pi-01", env=env, extra_args=["--loadgen-rate", "50"])
    result = push_model(
        model("digits_int8"), "pi-01", BrokerAddress(broker.host, broker.port),
        load_private(keys_dir), name="digits", version="1", release=1,
        gates={"min_inferences": 20, "min_seconds": 0.5}, progress=None, timeout_s=120,
    )  # fmt: skip
    assert result.ok, result
    committed = time.monotonic()
    wait_for(
        lambda: len([t for t in notify.times("WATCHDOG=1") if t > committed]) >= 2,
        10, "pings while the committed model serves",
    )  # fmt: skip
    wait_for(lambda: "the inference worker hangs now" in agent.log(), 30, "the injected hang")
    hung = time.monotonic()

    def silent_for(seconds: float) -> bool:
        last = max(notify.times("WATCHDOG=1"))
        return time.monotonic() - last > seconds

    # at most one more interval of pings (the stall is noticed after 2 s), then none
    wait_for(lambda: silent_for(3.0), 15, "the WATCHDOG=1 pings to stop")
    late = [t for t in notify.times("WATCHDOG=1") if t > hung + 2.0 + 1.0 + 0.5]
    assert late == []
    # only the worker is stuck: the core loop still publishes telemetry, the process lives
    with observing(broker, "pi-01") as obs:
        obs.wait_message(lambda m: m.topic.endswith("/telemetry"), 10, "telemetry after the hang")
    assert agent.alive()
    assert not [t for t in notify.times("WATCHDOG=1") if t > hung + 3.5]
    agent.kill()  # a clean stop would wait for the wedged worker


# ---- configuration errors: exit 2, every problem listed, no traceback ---------------------------
def _run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", *args],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_config_errors_exit_2_listing_every_problem(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('device_id = "pi-01"\n[broker\nport = 1883\n')
    r = _run_agent("--config", str(bad_toml))
    assert r.returncode == 2, r
    assert "not valid TOML" in r.stderr and "Traceback" not in r.stderr

    many = tmp_path / "many.toml"
    many.write_text(
        'device_id = "pi/01"\n'
        'trust_keys = ["/nonexistent/host.pub"]\n'
        '[broker]\nport = 70000\nkeepalive_s = 1\ncolour = "blue"\n'
        '[runtime]\ndelegate = "gpu"\n'
        "[telemetry]\ninterval_s = 0\n"
    )
    r = _run_agent("--config", str(many))
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    needles = ("device_id", "trust_keys: public key file /nonexistent/host.pub", "broker.port",
               "broker.keepalive_s", "broker.colour: unknown option", "runtime.delegate",
               "telemetry.interval_s", "7 configuration problem")  # fmt: skip
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def test_missing_or_unreadable_trust_key_exits_2(tmp_path: Path) -> None:
    common = ["--device-id", "pi-01", "--broker", f"127.0.0.1:{free_port()}",
              "--state-dir", str(tmp_path / "state")]  # fmt: skip
    r = _run_agent(*common)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    assert "trust_keys: at least one host public key is required" in r.stderr
    r = _run_agent(*common, "--trust-key", str(tmp_path / "missing.pub"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    assert f"public key file {tmp_path / 'missing.pub'} does not exist" in r.stderr
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    r = _run_agent(*common, "--trust-key", str(garbage))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    assert str(garbage) in r.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
