"""A full state disk is survived: on a real small tmpfs the test mounts (root only).

The outbox on a full disk drops records (counted) instead of raising, and opens in memory when
it cannot open its file; the real agent keeps its PID and keeps serving for 30 s after the disk
fills, says so in its state and events, and starts again on the full disk and stays up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.mqtt.outbox import Outbox, OutboxDrainer
from tests.agent_proc import AgentProcess, Observer, wait_for
from tests.e2e_host import agent_config, assert_digits_serving, seed_state
from tests.test_outbox import FakePublisher

DISK_MB = 3


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until the filesystem refuses (ENOSPC)."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == 28, exc
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh ``DISK_MB`` MB tmpfs mounted at ``tmp_path/disk``."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the disk-full tests run as root in CI)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mnt)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_outbox_on_a_full_disk_drops_and_counts_and_recovers(small_disk: Path) -> None:
    box = Outbox(small_disk / "outbox.sqlite", max_bytes=1 << 20)
    transitions: list[bool] = []
    box.add_full_listener(transitions.append)
    assert box.append("t", b"before") > 0
    filler = fill(small_disk)
    seqs = [box.append("t", b"x" * 4096) for _ in range(200)]
    assert 0 in seqs and box.disk_full and transitions == [True]
    report = box.disk_report()
    assert report is not None and report["records_lost"] > 0 and "free space" in report["hint"]
    assert box.dropped >= seqs.count(0)
    filler.unlink()
    assert box.append("t", b"after") > 0
    assert not box.disk_full and transitions == [True, False] and box.disk_report() is None


def test_outbox_that_cannot_open_on_a_full_disk_runs_in_memory(small_disk: Path) -> None:
    fill(small_disk)
    box = Outbox(small_disk / "outbox.sqlite")
    assert box.in_memory and box.disk_full
    assert box.append("t", b"kept in memory") > 0
    assert [r.payload for r in box.peek()] == [b"kept in memory"]


def test_drainer_outlives_deletes_that_fail_on_a_full_disk(small_disk: Path) -> None:
    """On a full disk even the DELETE of an acknowledged record fails (SQLite needs WAL
    space): the drainer thread carries on, does not send the record again, and deletes it once
    space is back."""
    box = Outbox(small_disk / "outbox.sqlite", max_bytes=1 << 20)
    for i in range(20):
        box.append("t", b"%d" % i)
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next DELETE must grow the WAL
    pub = FakePublisher()
    drainer = OutboxDrainer(box, pub, window=4, housekeeping_s=0.2)
    filler = fill(small_disk)
    drainer.start()
    try:
        wait_for(lambda: len(pub.sent) == 4, 5, "a full window sent")
        for _, handle in pub.outstanding():
            handle._resolve(0)
        wait_for(lambda: len(pub.sent) == 8, 5, "the next window after the PUBACKs")
        assert drainer.acked == 4 and box.stats().records == 20  # acked, not yet deleted
        filler.unlink()
        while len(pub.sent) < 20 or pub.outstanding():
            for _, handle in pub.outstanding():
                handle._resolve(0)
            wait_for(lambda: pub.outstanding() or len(pub.sent) == 20, 5, "progress")
        wait_for(lambda: box.stats().records == 0, 5, "every record deleted once space is back")
        assert [p for p, _ in pub.sent] == [b"%d" % i for i in range(20)]  # none sent twice
        assert drainer.acked == 20
    finally:
        drainer.stop()


def test_outbox_wal_stays_within_its_share_of_the_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=256 << 10)
    for i in range(2000):
        box.append("t", b"y" * 200)
        box.ack(i + 1)
    box.enforce_bounds()
    assert box.wal_bytes() <= box.wal_reserve, (box.wal_bytes(), box.wal_reserve)


@pytest.mark.broker
@pytest.mark.runtime
def test_agent_survives_a_full_disk_and_restarts_on_it(
    small_disk: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_agent: Callable[..., AgentProcess],
) -> None:
    seeded, sha = seed_state(tmp_path_factory.mktemp("seed"))
    shutil.copytree(seeded, small_disk, dirs_exist_ok=True)
    args = [*agent_config(tmp_path), "--telemetry-interval", "0.2"]
    agent = start_agent(state_dir=small_disk, extra_args=args, ready_check=True)
    pid = agent.pid
    with Observer(agent.broker, ["edgeloop/dev/pi-01/events"]) as events:
        filler = fill(small_disk)
        msg = events.wait_message(
            lambda m: json.loads(m.payload)["kind"] == "disk_full",
            20,
            "a disk_full event",
            raise_=False,
        )
        assert msg is not None, agent.log()
        assert json.loads(msg.payload)["code"] == "disk_full"
    state = wait_for(lambda: (agent.state(1.0) or {}).get("disk"), 10, "disk in the state")
    assert state["full"] is True and "free space" in state["hint"]
    stays_up(agent, sha, 30)
    assert agent.pid == pid
    # Space comes back: new windows reach the broker (the outbox drainer outlived the failed
    # deletes of a full disk) and the state says the disk is no longer full.
    with Observer(agent.broker, ["edgeloop/dev/pi-01/telemetry"]) as telemetry:
        freed = time.time()
        filler.unlink()
        telemetry.wait_message(
            lambda m: json.loads(m.payload)["ts"] > freed + 1, 20, "a window made after the free"
        )
    wait_for(lambda: disk_state(agent) is False, 10, "the state saying the disk is not full")
    assert agent.stop() == 0
    fill(small_disk)
    again = start_agent(state_dir=small_disk, extra_args=args, ready_check=True)
    stays_up(again, sha, 10)


def disk_state(agent: AgentProcess) -> bool | None:
    """``disk.full`` in the retained state (False when there is no ``disk`` report)."""
    state = agent.state(1.0)
    return None if state is None else bool((state.get("disk") or {}).get("full"))


def stays_up(agent: AgentProcess, sha: str, seconds: float) -> None:
    """The agent keeps its PID and serves ``sha`` for ``seconds``."""
    pid, end = agent.pid, time.monotonic() + seconds
    while time.monotonic() < end:
        assert agent.alive() and agent.pid == pid, agent.log()
        assert_digits_serving(agent, sha)
