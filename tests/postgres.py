"""A real PostgreSQL server for tests: its own cluster in a temp dir, a free port, clean exit.

Debian's binaries (``apt-get install postgresql``, which ``.ci/run`` does) under
/usr/lib/postgresql/<major>/bin; ``EDGELOOP_PG_BIN`` overrides the directory. ``initdb``
refuses to run as root, so as root the cluster belongs to the ``postgres`` user the package
creates, and its directory is made outside pytest's root-only temp dirs. Authentication is
``trust`` on 127.0.0.1 only. :meth:`PgServer.database` makes a fresh database per test.

Missing binaries fail the test (never a silent skip): the registry must be tested on both
engines wherever the suite runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.broker import free_port, wait_or_kill

__all__ = ["PgServer", "find_pg_bin"]


def find_pg_bin() -> Path:
    """The directory holding initdb and postgres; AssertionError naming the fix when missing."""
    env = os.environ.get("EDGELOOP_PG_BIN")
    candidates = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"))[::-1]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    raise AssertionError(
        "PostgreSQL server binaries not found (initdb, postgres under /usr/lib/postgresql/*/bin): "
        "apt-get install postgresql, or set EDGELOOP_PG_BIN"
    )


def _server_user() -> str | None:
    """The user to run the server as: ``postgres`` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError as exc:
        raise AssertionError(
            "running as root and no `postgres` user: initdb refuses root "
            "(apt-get install postgresql creates the user)"
        ) from exc


@dataclass
class PgServer:
    """One ``postgres`` process on its own cluster."""

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://edgeloop@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://edgeloop@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PgServer:
        bin_dir = find_pg_bin()
        self.user = _server_user()
        # /tmp itself, not pytest's tmp_path: its parents are root-only (0700)
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
        data = self.workdir / "data"
        if self.user is not None:
            shutil.chown(self.workdir, self.user)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "--username=edgeloop",
             "--no-locale", "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, user=self.user, timeout=120,
        )  # fmt: skip
        log = open(self.workdir / "postgres.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}",
             "-c", "max_connections=100", "-c", "shared_buffers=64MB"],
            stdout=log, stderr=subprocess.STDOUT, user=self.user,
        )  # fmt: skip
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, deadline_s: float = 30.0) -> None:
        import psycopg

        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise AssertionError(f"postgres did not accept connections in {deadline_s}s:\n{self.log()}")

    def log(self) -> str:
        p = (self.workdir or Path("/nonexistent")) / "postgres.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def database(self, prefix: str = "t") -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT); AssertionError if it does not exit cleanly."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                proc.send_signal(2)
                rc = wait_or_kill(proc, 30, "postgres did not exit on SIGINT in 30s")
                if rc != 0:
                    raise AssertionError(f"postgres exited with {rc}:\n{self.log()}")
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
