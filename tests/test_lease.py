"""Only one host drives a model's loop: the registry lease (deploy/fleet/lease.py) on both
engines, across processes killed with SIGKILL, and two LoopServices on one registry."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from deploy.fleet.lease import Lease
from deploy.fleet.registry import Registry
from deploy.loop import service as service_mod
from deploy.loop.driver import ClassRun
from deploy.loop.service import STOPPED_NOTE, LoopService
from deploy.loop.targets import ClassTargets, Targets
from tests.mqtt_util import read_until, wait_until

CLS = "rpi4b-cpu/ai-edge-litert"
HOLDER_SCRIPT = """
import sys, time
from deploy.fleet.lease import Lease
from deploy.fleet.registry import Registry
lease = Lease(Registry(sys.argv[1]), "loop/digits", holder="child", ttl_s=float(sys.argv[2]))
print("held" if lease.acquire() else "refused", flush=True)
time.sleep(600)
"""


def test_one_holder_at_a_time_and_release_hands_over(registry_target):
    with Registry(registry_target) as a, Registry(registry_target) as b:
        la, lb = Lease(a, "loop/digits", holder="A"), Lease(b, "loop/digits", holder="B")
        assert la.acquire() and la.held
        assert not lb.acquire() and not lb.held
        assert lb.holder() == "A"
        assert la.acquire()  # re-entrant for its holder
        assert Lease(b, "loop/other", holder="B").acquire()  # one lease per model
        la.release()
        assert not la.held and la.holder() is None
        assert lb.acquire() and la.holder() == "B"
        assert not la.acquire()
        lb.release()


def test_a_sqlite_lease_of_a_dead_holder_expires(tmp_path):
    path = str(tmp_path / "r.sqlite")
    with Registry(path) as a, Registry(path) as b:
        now = [1000.0]
        la = Lease(a, "loop/digits", holder="A", ttl_s=30, clock=lambda: now[0])
        lb = Lease(b, "loop/digits", holder="B", ttl_s=30, clock=lambda: now[0])
        assert la.acquire()
        la._stop.set()  # A freezes: its keeper stops renewing
        now[0] += 29
        assert not lb.acquire()
        now[0] += 2  # past the expiry
        assert lb.acquire() and lb.holder() == "B"
        assert not la.renew() and not la.held  # A wakes up: it knows it lost the lease
        lb.release()


def test_the_keeper_renews_a_held_lease(tmp_path):
    path = str(tmp_path / "r.sqlite")
    with Registry(path) as a, Registry(path) as b:
        la = Lease(a, "loop/digits", holder="A", ttl_s=0.6)
        assert la.acquire()
        end = time.monotonic() + 2.0  # more than three TTLs
        while time.monotonic() < end:
            assert not Lease(b, "loop/digits", holder="B", ttl_s=0.6).acquire()
            time.sleep(0.05)
        assert la.held
        la.release()


@pytest.mark.parametrize(
    ("engine", "ttl"),
    [("sqlite", 1.0), pytest.param("postgresql", 600.0, marks=pytest.mark.postgres)],
)
def test_a_sigkilled_holder_frees_the_lease(engine, ttl, tmp_path, request):
    """PostgreSQL frees it at once (the session ends); SQLite when the row expires."""
    target = str(tmp_path / "r.sqlite") if engine == "sqlite" else request.getfixturevalue("pg_url")
    Registry(target).close()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, target, str(ttl)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert read_until(child, "held", 30)[-1] == "held"
        with Registry(target) as reg:
            lease = Lease(reg, "loop/digits", holder="B", ttl_s=30)
            assert not lease.acquire() and lease.holder() == "child"
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            wait_until(lease.acquire, 10 if engine == "postgresql" else ttl + 10, "the lease")
            assert lease.holder() == "B"
            lease.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


@dataclass
class Driving:
    """Who runs a model's loop, when: fails the test if two ever overlap."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    overlaps: int = 0


def fake_loop(driving: Driving, name: str) -> type:
    class FakeLoop:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.stop = kwargs["stop"]

        def run(self, only: list[str]) -> list[ClassRun]:
            with driving.lock:
                driving.overlaps += bool(driving.inside)
                driving.inside.append(name)
                driving.runs.append(name)
            self.stop.wait(0.05)  # the loop at work (pushes, trials)
            with driving.lock:
                driving.inside.remove(name)
            # not finished: the service triggers the class again at its next poll
            return [ClassRun(c, "pi-01", ["pi-01"], note=f"{STOPPED_NOTE} (test)") for c in only]

    return FakeLoop


@dataclass
class FakeDeployer:
    model: str = "digits"


def test_two_loop_services_on_one_registry_never_both_drive_one_model(registry_target, monkeypatch):
    with Registry(registry_target) as reg:
        reg.upsert_device("pi-01", hardware_class=CLS)  # online: the class needs the loop
    driving = Driving()
    services = []
    for name in ("A", "B"):
        reg = Registry(registry_target)  # its own connection, as another host
        targets = Targets("digits", ClassTargets("*"))
        svc = LoopService(reg, FakeDeployer(), targets, poll_s=0.01)  # type: ignore[arg-type]
        services.append((name, svc))
    current: dict[str, type] = {}

    def loop_for_thread(*args: Any, **kwargs: Any) -> Any:
        return current[threading.current_thread().name](*args, **kwargs)

    monkeypatch.setattr(service_mod, "StoppableLoop", loop_for_thread)
    for name, _svc in services:
        current[name] = fake_loop(driving, name)

    # one-shot cycles from both, as fast as they go: the lease is taken and given back each time
    def cycles(svc: LoopService) -> None:
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline and driving.runs.count(threading.current_thread().name) < 5
        ):
            svc.run_cycle(svc.evaluate())
            time.sleep(0.01)  # the poll between cycles

    threads = [threading.Thread(target=cycles, args=(s,), name=n) for n, s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert driving.overlaps == 0
    assert driving.runs.count("A") >= 5 and driving.runs.count("B") >= 5
    # serving: the first service to get the lease keeps it until it stops
    driving.runs.clear()
    threads = [threading.Thread(target=s.serve, name=n) for n, s in services]
    for t in threads:
        t.start()
    wait_until(lambda: len(driving.runs) >= 10, 30, "ten cycles")
    first = driving.runs[0]
    assert set(driving.runs) == {first}
    holder = dict(services)[first]
    holder.stop.set()  # it stops: the other one takes over
    other = "B" if first == "A" else "A"
    wait_until(lambda: other in driving.runs, 30, f"{other} takes over")
    for _n, s in services:
        s.stop.set()
    for t in threads:
        t.join(30)
    assert driving.overlaps == 0
    for _n, s in services:
        s.registry.close()
