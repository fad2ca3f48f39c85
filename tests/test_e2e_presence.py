"""P17: presence, observed with ``mosquitto_sub`` alone (no project code on the host side).

A retained birth on ``{p}/dev/{id}/state`` on every connect; the will (``{"online": false}``)
marks an agent killed with SIGKILL offline within 1.5 x keepalive (at once in fact: the broker
sees the socket close), and a frozen one (SIGSTOP: socket open but silent, like a board that
lost power) once the broker's keepalive check runs (see BROKER_DETECT_S); a clean stop (SIGTERM)
publishes ``{"online": false, "reason": "stopped"}`` and does not fire the will.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_proc import AgentProcess
from tests.broker import Broker

pytestmark = [pytest.mark.broker]

KEEPALIVE_S = 4
STATE = "edgeloop/dev/pi-01/state"
SYNC = "test/sync"
# A silent client (power cut: no FIN) is dropped by the broker after 1.5 x keepalive without a
# packet, in whole seconds; Mosquitto 2.0 runs that check only every ~6 s (keepalive.c:
# ``last_keepalive_check + 5 < now``), so the will can come up to 1.5 x keepalive + 7 s late.
BROKER_DETECT_S = KEEPALIVE_S * 3 // 2 + 1 + 6
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def sub_once(broker: Broker, topic: str, timeout: int = 10) -> dict[str, Any]:
    """`mosquitto_sub -C 1`: the retained message (or the next one) on ``topic``."""
    out = subprocess.run(
        [MOSQUITTO_SUB, "-V", "mqttv5", "-h", broker.host, "-p", str(broker.port),
         "-C", "1", "-W", str(timeout), "-t", topic],
        capture_output=True, text=True, timeout=timeout + 5, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class Watcher:
    """A background `mosquitto_sub -R -v` (new messages only) on the state topic."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.proc = subprocess.Popen(
            [MOSQUITTO_SUB, "-V", "mqttv5", "-h", broker.host, "-p", str(broker.port),
             "-q", "1", "-R", "-v", "-t", STATE, "-t", SYNC],
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[float, str, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.sync("ready")  # subscribed from here on

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic, _, payload = line.rstrip("\n").partition(" ")
            self.lines.put((time.monotonic(), topic, payload))

    def _pub(self, payload: str) -> None:
        subprocess.run(
            [MOSQUITTO_PUB, "-h", self.broker.host, "-p", str(self.broker.port), "-q", "1",
             "-t", SYNC, "-m", payload],
            check=True, timeout=10,
        )  # fmt: skip

    def sync(self, marker: str) -> list[tuple[float, str]]:
        """Publish ``marker`` until it comes back; returns the state messages seen before it."""
        seen: list[tuple[float, str]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._pub(marker)
            try:
                while True:
                    t, topic, payload = self.lines.get(timeout=0.3)
                    if topic == SYNC and payload == marker:
                        return seen
                    if topic == STATE:
                        seen.append((t, payload))
            except queue.Empty:
                continue
        raise AssertionError(f"mosquitto_sub never saw the marker {marker!r}")

    def next_state(self, timeout: float) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no state message within {timeout}s")
            try:
                t, topic, payload = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if topic == STATE:
                return t, json.loads(payload)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def watcher(broker: Broker) -> Iterator[Callable[[], Watcher]]:
    made: list[Watcher] = []

    def make() -> Watcher:
        made.append(Watcher(broker))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture
def presence_agent(
    tmp_path: Path, start_agent: Callable[..., AgentProcess]
) -> Callable[[], AgentProcess]:
    conf = tmp_path / "agent.toml"
    conf.write_text(f"[broker]\nkeepalive_s = {KEEPALIVE_S}\nreconnect_max_s = 2.0\n")
    return lambda: start_agent("pi-01", extra_args=["--config", str(conf)])


def test_birth_telemetry_and_will_after_sigkill(
    broker: Broker, presence_agent: Callable[[], AgentProcess], watcher: Callable[[], Watcher]
) -> None:
    agent = presence_agent()
    birth = sub_once(broker, STATE)
    assert birth["online"] is True and birth["boot_id"]
    assert birth["runtime"]["name"] and birth["hardware_class"]
    tel = sub_once(broker, "edgeloop/dev/pi-01/telemetry")
    assert isinstance(tel["seq"], int) and tel["boot_id"] == birth["boot_id"]
    assert tel["outbox_dropped"] == 0 and tel["rss_mb"] > 0

    w = watcher()
    killed = time.monotonic()
    agent.kill()  # SIGKILL: no chance to say goodbye
    t, will = w.next_state(1.5 * KEEPALIVE_S)
    assert will == {"online": False}
    assert t - killed <= 1.5 * KEEPALIVE_S
    assert sub_once(broker, STATE) == {"online": False}  # retained: late joiners see it too


def test_frozen_agent_marked_offline_by_keepalive_then_reborn(
    broker: Broker, presence_agent: Callable[[], AgentProcess], watcher: Callable[[], Watcher]
) -> None:
    agent = presence_agent()
    boot_id = sub_once(broker, STATE)["boot_id"]
    w = watcher()
    os.kill(agent.pid, signal.SIGSTOP)  # socket open, nothing sent: only keepalive tells
    stopped = time.monotonic()
    try:
        t, will = w.next_state(BROKER_DETECT_S + 3)
        assert will == {"online": False}
        assert t - stopped <= BROKER_DETECT_S
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    _t, birth = w.next_state(20)  # the agent reconnects and publishes its birth again
    assert birth["online"] is True and birth["boot_id"] == boot_id
    assert agent.alive()


def test_clean_stop_publishes_stopped_and_not_the_will(
    broker: Broker, presence_agent: Callable[[], AgentProcess], watcher: Callable[[], Watcher]
) -> None:
    agent = presence_agent()
    assert sub_once(broker, STATE)["online"] is True
    w = watcher()
    assert agent.stop() == 0  # SIGTERM
    # everything the broker published on the state topic up to a marker sent after the exit
    seen = w.sync("after-exit")
    assert [json.loads(p) for _t, p in seen] == [{"online": False, "reason": "stopped"}]
    assert sub_once(broker, STATE) == {"online": False, "reason": "stopped"}
