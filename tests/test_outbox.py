"""agent.mqtt.outbox: durable, bounded, acknowledged-only deletion; end to end through a real
Mosquitto that is stopped and restarted (P10), including a publisher killed during the outage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.mqtt.outbox import Outbox, OutboxDrainer
from agent.mqtt.types import PublishHandle
from tests.broker import Broker
from tests.mqtt_util import Collector, read_until, start_proc, wait_until

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_append_peek_ack_in_seq_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = [box.append("t/a", f"p{i}".encode()) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [r.payload for r in box.peek()] == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert [r.seq for r in box.peek(after_seq=seqs[2])] == seqs[3:]
    assert box.ack(seqs[0]) and not box.ack(seqs[0])
    assert box.stats().records == 4


def test_payload_can_carry_its_own_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seq = box.append("t", lambda s: json.dumps({"seq": s}).encode())
    assert json.loads(box.peek()[0].payload) == {"seq": seq}


def test_seq_survives_reopen_and_is_never_reused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    last = [box.append("t", b"x") for _ in range(3)][-1]
    for r in box.peek():
        box.ack(r.seq)
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.append("t", b"y") == last + 1


def test_byte_bound_drops_oldest_and_counts_persistently(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10 * (100 + 1 + 32) * 4 // 3 + 1)
    assert box.record_budget >= 10 * 133 and box.wal_reserve == box.max_bytes // 4
    seqs = [box.append("t", b"x" * 100) for _ in range(15)]
    stats = box.stats()
    assert stats.records == 10 and stats.bytes <= box.record_budget
    assert [r.seq for r in box.peek()] == seqs[5:]  # the 5 oldest went
    assert stats.dropped == 5 == box.dropped
    box.close()
    assert Outbox(tmp_path / "o.db", max_bytes=box.max_bytes).dropped == 5


def test_age_bound_drops_stale_records(tmp_path: Path) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", max_age_s=60, clock=clock)
    old = [box.append("t", b"old") for _ in range(3)]
    clock.t += 45
    new = box.append("t", b"new")
    clock.t += 30  # the first three are now 75 s old, the last 30 s
    assert box.enforce_bounds() == 3
    assert [r.seq for r in box.peek()] == [new]
    assert box.dropped == 3 and old[-1] < new


def test_rejected_record_is_removed_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seq = box.append("t", b"x")
    assert box.reject(seq)
    assert box.stats().rejected == 1 and box.stats().records == 0 and box.dropped == 0


def test_unreadable_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    assert box.append("t", b"x") == 1
    assert list(tmp_path.glob("o.db.corrupt-*"))


def test_records_survive_sigkill_right_after_append(tmp_path: Path) -> None:
    """A record whose append() returned is on disk even if the process dies at once."""
    path = tmp_path / "o.db"
    code = (
        "import os, sys\n"
        "from agent.mqtt.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "for i in range(200):\n"
        "    seq = box.append('t', str(i).encode())\n"
        "    print(seq, flush=True)\n"
        "    if i == 150: os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == -signal.SIGKILL
    printed = [int(x) for x in proc.stdout.split()]
    assert len(printed) == 151
    stored = {r.seq for r in Outbox(path).peek(limit=1000)}
    assert set(printed) <= stored


class FakePublisher:
    """The drainer's one seam: handles resolved by the test, every publish recorded."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[bytes, PublishHandle]] = []
        self.lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> PublishHandle:
        h = PublishHandle(len(self.sent) + 1, qos)
        with self.lock:
            self.sent.append((payload if isinstance(payload, bytes) else payload.encode(), h))
        return h

    def add_connection_listener(self, fn: Callable[[bool], None]) -> None:
        self._listeners.append(fn)

    def outstanding(self) -> list[tuple[bytes, PublishHandle]]:
        with self.lock:
            return [(p, h) for p, h in self.sent if not h.done()]


@pytest.fixture
def drained(tmp_path: Path) -> Iterator[tuple[Outbox, FakePublisher, OutboxDrainer]]:
    box = Outbox(tmp_path / "o.db")
    pub = FakePublisher()
    drainer = OutboxDrainer(box, pub, window=4)
    drainer.start()
    yield box, pub, drainer
    drainer.stop()


def test_drainer_keeps_a_bounded_window_in_order(drained) -> None:
    box, pub, drainer = drained
    for i in range(10):
        box.append("t", str(i).encode())
    wait_until(lambda: len(pub.sent) == 4, 5, "a full window")
    assert [p for p, _ in pub.sent] == [b"0", b"1", b"2", b"3"]
    for _, h in pub.outstanding()[:2]:
        h._resolve(0)
    wait_until(lambda: len(pub.sent) == 6, 5, "two more after two PUBACKs")
    assert len(pub.outstanding()) == 4
    while len(pub.sent) < 10 or pub.outstanding():
        for _, h in pub.outstanding():
            h._resolve(0x10)  # "no matching subscribers" is success too
        wait_until(lambda: pub.outstanding() or len(pub.sent) == 10, 5, "progress")
    wait_until(lambda: box.stats().records == 0, 5, "every acked record deleted")
    assert [p for p, _ in pub.sent] == [str(i).encode() for i in range(10)]
    assert drainer.acked == 10


def test_drainer_resends_a_record_that_was_never_acknowledged(drained) -> None:
    box, pub, _drainer = drained
    box.append("t", b"a")
    wait_until(lambda: len(pub.sent) == 1, 5, "first send")
    pub.sent[0][1]._resolve(None, "offline")  # connection raced away: no PUBACK
    wait_until(lambda: len(pub.sent) == 2, 5, "the re-send")
    assert pub.sent[1][0] == b"a"
    pub.sent[1][1]._resolve(0)
    wait_until(lambda: box.stats().records == 0, 5, "deletion after PUBACK")


def test_drainer_removes_and_counts_refused_records(drained) -> None:
    box, pub, drainer = drained
    box.append("t", b"bad")
    box.append("t", b"good")
    wait_until(lambda: len(pub.sent) == 2, 5, "both sent")
    pub.sent[0][1]._resolve(0x87)
    pub.sent[1][1]._resolve(0)
    wait_until(lambda: box.stats().records == 0, 5, "both settled")
    assert box.stats().rejected == 1 and drainer.rejected == 1 and drainer.acked == 1


# ----- end to end through Mosquitto (P10) --------------------------------------------------
def host_collector(broker: Broker, device: str) -> Collector:
    """The host: persistent session (clean_start False + expiry), so nothing queued is lost."""
    col = Collector(
        broker.host,
        broker.port,
        [f"edgeloop/dev/{device}/telemetry"],
        client_id=f"host-{device}",
        clean_start=False,
        session_expiry=600,
    )
    col.client.reconnect_delay_set(1, 1)
    return col.start()


def seqs_seen(col: Collector, device: str) -> set[int]:
    return {json.loads(m.payload)["seq"] for m in col.on(f"edgeloop/dev/{device}/telemetry")}


def appended(lines: list[str]) -> int:
    return sum(1 for x in lines if x.startswith("APPENDED"))


@pytest.mark.broker
@pytest.mark.slow
def test_outage_loses_no_telemetry(broker: Broker, procs: list[subprocess.Popen[str]]) -> None:
    host = host_collector(broker, "p1")
    proc = start_proc(
        broker,
        "p1",
        "--outbox",
        str(broker.workdir.parent / "p1.db"),
        "--count",
        "60",
        "--interval",
        "0.05",
    )
    procs.append(proc)
    lines = read_until(proc, "APPENDED 15")
    broker.save()
    broker.stop()  # SIGTERM: the broker writes its persistence file on the way out
    lines += read_until(proc, "APPENDED 45")  # ~1.5 s of records appended while it is down
    assert "DISCONNECTED" in lines
    broker.start()
    lines += read_until(proc, "ALL_APPENDED")
    wait_until(lambda: seqs_seen(host, "p1") >= set(range(1, 61)), 30, "seq 1..60 at the host")
    assert seqs_seen(host, "p1") == set(range(1, 61))  # gapless after dedup, nothing extra
    host.stop()


@pytest.mark.broker
@pytest.mark.slow
def test_outage_with_the_publisher_killed_resumes_from_disk(
    broker: Broker, procs: list[subprocess.Popen[str]]
) -> None:
    host = host_collector(broker, "p2")
    db = str(broker.workdir.parent / "p2.db")
    first = start_proc(broker, "p2", "--outbox", db, "--count", "30", "--interval", "0.05")
    procs.append(first)
    read_until(first, "APPENDED 10")
    broker.save()
    broker.stop()
    lines = read_until(first, "ALL_APPENDED")  # 1..30 on disk, most never published
    assert "DISCONNECTED" in lines
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    broker.start()
    second = start_proc(broker, "p2", "--outbox", db, "--count", "20", "--interval", "0.02")
    procs.append(second)
    read_until(second, "ALL_APPENDED")
    wait_until(lambda: seqs_seen(host, "p2") >= set(range(1, 51)), 30, "seq 1..50 at the host")
    assert seqs_seen(host, "p2") == set(range(1, 51))
    second.send_signal(signal.SIGTERM)
    read_until(second, "STOPPED")
    assert Outbox(db).stats().records == 0  # everything acknowledged was deleted
    host.stop()
