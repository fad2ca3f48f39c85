"""Run the real agent (`python -m agent run`) as a subprocess, and a host-side MQTT observer.

Tests use these to talk to the daemon exactly as a host would: over a real broker, with signed
manifests, chunk serving (deploy.push.Pusher) and events/telemetry read off the wire.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, TransportConfig
from tests.broker import Broker

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class AgentProcess:
    """One agent subprocess. ``start()`` waits for its retained birth."""

    broker: Broker
    state_dir: Path
    trust_key: Path
    device_id: str = "pi-01"
    hw_root: str | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    telemetry_interval: float = 1.0
    ready_check: bool = False  # start() also waits until a command is answered (subscribed)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "agent", "-v", "run",
            "--device-id", self.device_id,
            "--broker", self.broker.url,
            "--state-dir", str(self.state_dir),
            "--trust-key", str(self.trust_key),
            "--telemetry-interval", str(self.telemetry_interval),
        ]  # fmt: skip
        if self.hw_root:
            cmd += ["--hw-root", self.hw_root]
        return cmd + self.extra_args

    def start(self, *, wait_online: bool = True, timeout: float = 30.0) -> AgentProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir.parent / f"{self.device_id}-agent.log"
        env = dict(os.environ) | {"PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"} | self.env
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT
        )
        logf.close()
        if wait_online:
            self.wait_online(timeout)
            if self.ready_check:
                self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def state(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The retained state message as a fresh subscriber sees it."""
        with Observer(self.broker, [f"edgeloop/dev/{self.device_id}/state"]) as obs:
            msg = obs.wait_message(lambda m: True, timeout, "retained state", raise_=False)
        return None if msg is None else json.loads(msg.payload)

    def wait_online(self, timeout: float = 30.0) -> dict[str, Any]:
        def online() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"agent exited with {self.proc and self.proc.returncode}:\n"
                                     f"{self.log()}")  # fmt: skip
            st = self.state(timeout=1.0)
            return st if st and st.get("online") and st.get("boot_id") else None

        result: dict[str, Any] = wait_for(online, timeout, "the agent's online birth")
        return result

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until a ``state`` command is answered. The birth is published before the agent's
        SUBSCRIBE reaches the broker, so on a first connect a command sent right after the
        birth can miss the (not yet existing) subscription."""
        reply_topic = f"test/ready/{uuid.uuid4().hex}"
        with Observer(self.broker, [reply_topic]) as obs:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.alive():
                    raise AssertionError(f"agent exited:\n{self.log()}")
                body = json.dumps({"id": uuid.uuid4().hex, "args": {}, "ts": time.time()})
                obs.transport.publish(
                    f"edgeloop/dev/{self.device_id}/cmd/state", body, response_topic=reply_topic
                ).wait(5)
                if obs.wait_message(lambda m: True, 1.0, "state reply", raise_=False):
                    return
        raise AssertionError(f"agent answered no command within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-8000:]

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # PYTHONFAULTHANDLER is set in start(): SIGABRT writes every thread's stack
                # to the log, so a hang in shutdown shows where it hangs
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.proc = None
                raise AssertionError(f"agent did not stop on SIGTERM:\n{self.log()}") from None
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc


class Observer:
    """A host-side MQTT v5 subscriber that records everything it receives."""

    def __init__(self, broker: Broker, topics: list[str]) -> None:
        self.messages: list[IncomingMessage] = []
        self._q: queue.Queue[IncomingMessage] = queue.Queue()
        self.transport = Transport(
            TransportConfig(
                host=broker.host, port=broker.port,
                client_id=f"observer-{uuid.uuid4().hex[:10]}", clean_start=True,
                session_expiry_s=0, subscriptions=[(t, 1) for t in topics],
            ),
            self._q.put,
        )  # fmt: skip

    def __enter__(self) -> Observer:
        self.transport.start()
        if not self.transport.wait_connected(10):
            raise AssertionError("observer could not connect to the broker")
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.stop(final=None)

    def _drain(self) -> None:
        while True:
            try:
                self.messages.append(self._q.get_nowait())
            except queue.Empty:
                return

    def wait_message(
        self,
        match: Callable[[IncomingMessage], bool],
        timeout: float,
        what: str,
        *,
        raise_: bool = True,
    ) -> IncomingMessage | None:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            self._drain()
            for m in self.messages[seen:]:
                if match(m):
                    return m
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                if raise_:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                return None
            with suppress(queue.Empty):
                self.messages.append(self._q.get(timeout=min(left, 0.2)))

    def json_messages(self, topic_suffix: str) -> list[dict[str, Any]]:
        self._drain()
        out = []
        for m in self.messages:
            if m.topic.endswith(topic_suffix):
                with suppress(ValueError):
                    out.append(json.loads(m.payload))
        return out

    def wait_event(self, kind: str, timeout: float = 60.0, **data: Any) -> dict[str, Any]:
        def match(m: IncomingMessage) -> bool:
            if not m.topic.endswith("/events"):
                return False
            ev = json.loads(m.payload)
            return bool(ev.get("kind") == kind and all(
                ev.get("data", {}).get(k) == v for k, v in data.items()))  # fmt: skip

        msg = self.wait_message(match, timeout, f"event {kind} {data}")
        assert msg is not None
        result: dict[str, Any] = json.loads(msg.payload)
        return result


@contextmanager
def observing(broker: Broker, device_id: str = "+") -> Iterator[Observer]:
    with Observer(
        broker,
        [f"edgeloop/dev/{device_id}/{k}" for k in ("state", "telemetry", "events")],
    ) as obs:
        yield obs
