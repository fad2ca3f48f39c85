"""Test helpers for MQTT: a paho v5 subscriber that collects messages, a mosquitto_sub runner,
and a deadline-based wait. No sleeps that hide races: everything polls a condition.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.agent_proc import wait_for
from tests.broker import Broker

REPO = Path(__file__).resolve().parents[1]

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def wait_until(
    cond: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.02
) -> Any:
    """Poll ``cond`` until truthy; return its value or raise AssertionError after ``timeout``."""
    return wait_for(cond, timeout, what, step=interval)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float  # time.monotonic() at arrival


class Collector:
    """A paho MQTT v5 client that records every message on its subscriptions."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: Sequence[str],
        *,
        client_id: str = "",
        clean_start: bool = True,
        session_expiry: int = 0,
        qos: int = 1,
        tls: dict[str, Any] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.topics = list(topics)
        self.qos = qos
        self.suback: list[int] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if tls:
            self.client.tls_set(**tls)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self._subscribed = threading.Event()
        self._host, self._port = host, port
        self._clean_start = clean_start
        self._session_expiry = session_expiry

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure and self.topics:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        self.suback = [r.value for r in rcs]
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic())
            )

    def start(self, timeout: float = 10.0) -> Collector:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._session_expiry:
            props.SessionExpiryInterval = self._session_expiry
        self.client.connect(
            self._host, self._port, keepalive=10, clean_start=self._clean_start, properties=props
        )
        self.client.loop_start()
        if self.topics and not self._subscribed.wait(timeout):
            raise AssertionError("collector did not get its SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self,
        pred: Callable[[Received], bool],
        timeout: float = 10.0,
        what: str = "a matching message",
    ) -> Received:
        def find() -> Received | None:
            with self.lock:
                return next((m for m in self.messages if pred(m)), None)

        result: Received = wait_until(find, timeout, what)
        return result

    def wait_count(
        self,
        pred: Callable[[Received], bool],
        n: int,
        timeout: float = 10.0,
        what: str = "messages",
    ) -> list[Received]:
        def enough() -> list[Received] | None:
            with self.lock:
                got = [m for m in self.messages if pred(m)]
            return got if len(got) >= n else None

        result: list[Received] = wait_until(enough, timeout, f"{n} {what}")
        return result


def mosquitto_sub(
    port: int, topic: str, *, count: int = 1, timeout_s: float = 10.0, extra: Sequence[str] = ()
) -> list[str]:
    """Run the real ``mosquitto_sub`` (no project code) and return its output lines.

    Prints ``topic payload`` per message (``-v``); ``-W`` makes it give up by itself.
    """
    cmd = [
        MOSQUITTO_SUB,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-V",
        "mqttv5",
        "-t",
        topic,
        "-C",
        str(count),
        "-v",
        "-W",
        str(max(1, int(timeout_s))),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s + 5, check=False)
    return proc.stdout.decode(errors="replace").splitlines()


# ----- the device-like client subprocess (tests/mqtt_client_proc.py) ---------------------
def start_proc(
    broker: Broker, client_id: str, *extra: str, keepalive: int = 2
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.mqtt_client_proc",
            "--port",
            str(broker.port),
            "--client-id",
            client_id,
            "--keepalive",
            str(keepalive),
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 15.0) -> list[str]:
    """Read the child's stdout lines until one starts with ``marker`` (deadline enforced)."""
    assert proc.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line:
            lines.append(line.strip())
            if line.startswith(marker):
                return lines
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.01)
    raise AssertionError(f"child did not print {marker!r} within {timeout}s: {lines}")
