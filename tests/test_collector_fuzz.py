"""The host workers under hostile input (issue 10): one device's malformed state or telemetry
is dropped with a warning (no traceback) and changes no other device's rows.

Real Registry (SQLite file), the real Collector.apply (the loop service's worker) and the real
Ingest.apply (`edge-deploy collect`, batched: the garbage shares a batch with good windows);
the broker is not needed for the seam under test (each worker's thread only hands messages to
apply()).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.board.hardware import detect
from agent.errors import EdgeloopError
from agent.mqtt.types import IncomingMessage
from deploy.fleet.collector import Collector
from deploy.fleet.ingest import Ingest
from deploy.fleet.registry import Registry
from deploy.mqtt import BrokerAddress
from tests.json_strategies import json_values
from tests.records import telemetry

HWTREES = Path(__file__).parent / "hwtrees"
GOOD_STATE = {
    "online": True,
    "hardware": detect(HWTREES / "rpi4b-coral-usb").to_dict(),
    "hardware_class": "rpi4b-edgetpu-usb",
    "runtime": {"name": "ai-edge-litert", "version": "2.3.0"},
}
values = json_values(int_bits=80, text_size=20, key_size=8, size=4, leaves=20)
state_keys = st.sampled_from(
    ["online", "hardware", "hardware_class", "runtime", "model", "boot_id", "x"]
)
hw_keys = st.sampled_from(["board_id", "board_family", "board", "accelerators", "x"])
telemetry_keys = st.sampled_from(
    ["seq", "ts", "inferences", "errors", "throttled", "model", "latency_ms", "energy", "x"]
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    values.map(_dumps),
    st.dictionaries(state_keys, values, max_size=5).map(_dumps),
    st.dictionaries(hw_keys, values, max_size=4).map(
        lambda hw: _dumps(GOOD_STATE | {"hardware": hw})
    ),
    st.dictionaries(telemetry_keys, values, max_size=6).map(_dumps),
    st.sampled_from([b"[" * 1000, b"[" * 900 + b"]" * 900, b"{" * 50, b"\xff\xfe"]),
)


def FUZZ(check: Callable[[str, bytes], None]) -> Callable[[], None]:
    """120 hostile (kind, payload) examples for ``check``."""
    return settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(kind=st.sampled_from(["state", "telemetry", "events"]), payload=bodies)(check))


def rows_of(db: Path, device: str) -> list[Any]:
    with sqlite3.connect(db) as conn:
        dev = conn.execute("SELECT * FROM devices WHERE id = ?", (device,)).fetchall()
        tel = conn.execute(
            "SELECT * FROM telemetry_windows WHERE device = ? ORDER BY seq", (device,)
        ).fetchall()
        cls = conn.execute(
            "SELECT * FROM hardware_classes WHERE id IN "
            "(SELECT hardware_class FROM devices WHERE id = ?)",
            (device,),
        ).fetchall()
    return [dev, tel, cls]


def test_one_devices_garbage_changes_no_other_devices_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "registry.sqlite"
    registry = Registry(db)
    collector = Collector(registry, BrokerAddress("127.0.0.1", 1))
    collector.apply(IncomingMessage("edgeloop/dev/good/state", _dumps(GOOD_STATE), 1, True))
    record = telemetry(1, 1000.0, inferences=10)
    collector.apply(IncomingMessage("edgeloop/dev/good/telemetry", _dumps(record), 1, False))
    collector.apply(IncomingMessage("edgeloop/dev/bad/state", _dumps(GOOD_STATE), 1, True))
    before = rows_of(db, "good")
    assert before[0] and before[1]

    @FUZZ
    def check(kind: str, payload: bytes) -> None:
        msg = IncomingMessage(f"edgeloop/dev/bad/{kind}", payload, 1, kind == "state")
        with contextlib.suppress(EdgeloopError, ValueError):  # what _run logs and drops
            collector.apply(msg)
        assert rows_of(db, "good") == before

    with caplog.at_level(logging.WARNING):
        check()
    registry.close()


def test_garbage_in_a_batch_fails_only_itself(tmp_path: Path) -> None:
    """A batch holding one device's garbage beside another device's window: the window is
    stored, the garbage counted as dropped, the batch never fails (it would be left
    unacknowledged and redelivered for ever: a poison message stalling the whole worker)."""
    db = tmp_path / "registry.sqlite"
    registry = Registry(db)
    ingest = Ingest(registry, BrokerAddress("127.0.0.1", 1), client_id="fuzz")
    ingest.apply([IncomingMessage("edgeloop/dev/good/state", _dumps(GOOD_STATE), 1, True)])
    seq = iter(range(1, 10_000))

    @FUZZ
    def check(kind: str, payload: bytes) -> None:
        n = next(seq)
        window = _dumps(telemetry(n, 1000.0 + n, inferences=10))
        before = rows_of(db, "good")
        dropped = ingest.stats.dropped
        ingest.apply(
            [
                IncomingMessage(f"edgeloop/dev/bad/{kind}", payload, 1, kind == "state"),
                IncomingMessage("edgeloop/dev/good/telemetry", window, 1, False),
            ]
        )
        after = rows_of(db, "good")
        assert after[0] == before[0] and after[2] == before[2]  # the device row and its class
        assert [r[1] for r in after[1]] == [r[1] for r in before[1]] + [n]  # one window more
        assert ingest.stats.dropped >= dropped

    check()
    ingest.apply([IncomingMessage("edgeloop/dev/bad/telemetry", b"[" * 100_000, 1, False)])
    assert ingest.stats.dropped >= 1
    registry.close()
