"""An embedded MQTT broker for the demo and for single-machine use: a Mosquitto child process.

It listens on 127.0.0.1 on a free port with its own config and data directory. On a real
fleet, run a broker cluster instead (see docs/operations.md).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import EdgeloopError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


class EmbeddedBroker:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0, conf: Path | None = None) -> EmbeddedBroker:
        """Start Mosquitto; ``conf``: a config file to use as it is (edge-deploy broker-config,
        whose device listener is ``self.port``) instead of the plain loopback one."""
        binary = find_mosquitto()
        if binary is None:
            raise EdgeloopError(
                "mosquitto is not installed",
                hint="apt-get install mosquitto (make demo does this), or pass --broker HOST:PORT",
                code="broker",
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if conf is None:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {self.workdir}/\nmax_queued_messages 100000\n"
                "set_tcp_nodelay true\n"
                f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            )
        with (self.workdir / "mosquitto.stderr").open("ab") as err:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgeloopError(
                    f"mosquitto exited at start; see {self.workdir}/mosquitto.log and .stderr"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EdgeloopError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
