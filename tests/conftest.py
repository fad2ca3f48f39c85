"""Fixtures shared by the suite: the real parts every end-to-end test starts from.

``broker`` (a fresh Mosquitto), ``pg_server`` / ``pg_url`` (a PostgreSQL cluster for the run,
a fresh database per test), ``registry_target`` (a registry on each engine), ``keys_dir`` (a
host key pair), ``start_agent`` (agent subprocesses, stopped and checked at the end), ``procs``
(other child processes, killed at the end); ``push_digits`` (digits_int8 r1 pushed as
``edge-deploy push`` does); ``seed`` (a state dir with digits_int8 r1 committed, made once per
run) and ``seeded`` (a ``tests.e2e_host.SeededDevice``: sign with the trusted key, start pi-01
on a copy of the seed, open a ``ScriptedHost``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.agent_proc import AgentProcess
from tests.broker import Broker
from tests.postgres import PgServer

if TYPE_CHECKING:
    from deploy.push import PushResult
    from tests.e2e_host import SeededDevice


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Mosquitto on a free port; the test fails if it does not exit cleanly."""
    b = Broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A fresh host signing key pair; the public key is ``keys_dir / "edgeloop.pub"``."""
    from deploy.keys import init_keys

    init_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def start_agent(
    broker: Broker, tmp_path: Path, keys_dir: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: ``start_agent(device_id="pi-01", **kwargs)`` runs a real agent subprocess.

    Every agent still running at the end is stopped with SIGTERM and must exit 0.
    """
    started: list[AgentProcess] = []

    def start(device_id: str = "pi-01", *, wait_online: bool = True, **kwargs: Any) -> AgentProcess:
        state_dir = kwargs.pop("state_dir", tmp_path / f"state-{device_id}")
        agent = AgentProcess(
            broker, state_dir, keys_dir / "edgeloop.pub", device_id=device_id, **kwargs
        )
        started.append(agent)
        return agent.start(wait_online=wait_online)

    yield start
    failures = []
    for agent in started:
        if agent.proc is not None:
            rc = agent.stop()
            if rc != 0:
                failures.append(f"{agent.device_id} exited {rc}:\n{agent.log()}")
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """digits_int8 r1 committed by a real agent, once per run: (state dir, sha256). Tests run
    on a copy of it (``seeded``)."""
    from tests.e2e_host import seed_state

    return seed_state(tmp_path_factory.mktemp("seed"))


@pytest.fixture
def seeded(
    seed: tuple[Path, str],
    broker: Broker,
    tmp_path: Path,
    keys_dir: Path,
    start_agent: Callable[..., AgentProcess],
) -> SeededDevice:
    """The delivery end-to-end preamble: broker, trusted key, pi-01 on the seeded state."""
    from deploy.keys import load_private
    from tests.e2e_host import SeededDevice

    seed_dir, old_sha = seed
    return SeededDevice(broker, load_private(keys_dir), old_sha, seed_dir, tmp_path, start_agent)


@pytest.fixture
def push_digits(broker: Broker, keys_dir: Path) -> Callable[..., PushResult]:
    """``push_digits(device_id="pi-01")``: push digits_int8 r1 signed with the trusted key."""
    from deploy.keys import load_private
    from tests import e2e_host

    key = load_private(keys_dir)

    def push(device_id: str = "pi-01") -> PushResult:
        return e2e_host.push_digits(broker, key, device_id)

    return push


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts (``tests.mqtt_util.start_proc``); killed at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the run (tests.postgres); fails when the binaries are
    missing, and if the server does not exit cleanly."""
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh empty database on the run's PostgreSQL server: its ``postgresql://`` URL."""
    return pg_server.database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry on each engine: a SQLite file path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.sqlite")
    return str(request.getfixturevalue("pg_url"))
