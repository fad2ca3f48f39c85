"""A real Mosquitto on 127.0.0.1 for tests: free port, own config and data dir, clean exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.broker import find_mosquitto, free_port

__all__ = ["Broker", "free_port", "running_broker", "wait_port"]

MOSQUITTO = find_mosquitto() or "/usr/sbin/mosquitto"


def wait_port(port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{port} within {deadline_s}s")


def wait_or_kill(proc: subprocess.Popen[Any], timeout: float, message: str) -> int:
    """``proc``'s exit status once it exits within ``timeout`` seconds; else it is killed and
    AssertionError(``message``) raised."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(message) from None


@dataclass
class Broker:
    """One Mosquitto process. ``extra_conf`` lines are appended to the generated config."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: list[str] = field(default_factory=list)
    persistence: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true"
            if not any("password_file" in x for x in self.extra_conf)
            else "allow_anonymous false",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            "message_size_limit 0",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"log_dest file {self.log_path}",
            # As root, Mosquitto drops to user "mosquitto", which cannot write the test's
            # persistence file or log: stay root so `persistence` and save() really work.
            *(["user root"] if os.geteuid() == 0 else []),
            *self.extra_conf,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        if not Path(MOSQUITTO).exists():
            raise RuntimeError(
                "mosquitto is not installed: apt-get install mosquitto mosquitto-clients"
            )
        self.write_conf()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            self.proc.kill()
            _, err = self.proc.communicate()
            text = err.decode(errors="replace")
            raise RuntimeError(f"mosquitto failed to start: {text}") from None
        return self

    def save(self) -> None:
        """Ask Mosquitto to write its persistence file now (SIGUSR1)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGUSR1)

    def stop(self, *, check: bool = True) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            # SIGCONT first, in case a test left it stopped.
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            rc = wait_or_kill(proc, 10, "mosquitto did not exit on SIGTERM within 10s")
        else:
            rc = proc.returncode
        if check and rc not in (0, -signal.SIGTERM):
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise AssertionError(f"mosquitto exited with {rc}\n{log}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@contextmanager
def running_broker(workdir: Path, **kwargs: object) -> Iterator[Broker]:
    broker = Broker(workdir, **kwargs)  # type: ignore[arg-type]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
