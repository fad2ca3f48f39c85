"""The host registry: migrations, telemetry roll-ups and dedup, and surviving a restart."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.board.hardware import detect
from agent.errors import ConfigError, ProtocolError
from deploy.fleet.migrations import MIGRATIONS, SCHEMA_VERSION
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import HardwareClass, ModelRow, Variant, class_id

HWTREES = Path(__file__).parent / "hwtrees"
CLS = "rpi4b-cpu/ai-edge-litert"


def variant(vid: str = "v-int8", recipe: str = "int8", sha: str = "a" * 64, **kw: Any) -> Variant:
    return Variant(id=vid, model="digits", recipe=recipe, path=f"/tmp/{vid}.tflite", sha256=sha,
                   size=kw.pop("size", 20_000), quantization=recipe, **kw)  # fmt: skip


def window(seq: int, sha: str = "a" * 64, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "seq": seq, "ts": 1000.0 + 10 * seq, "window_s": 10.0, "inferences": 100, "errors": 0,
        "model": {"sha256": sha, "name": "digits", "version": "1", "variant": {"recipe": "int8"},
                  "delegate": "cpu"},
        "latency_ms": {"p50": 2.0, "p90": 2.5, "p95": 3.0, "p99": 4.0, "max": 5.0, "mean": 2.1},
        "rss_mb": 60.0, "peak_rss_mb": 90.0, "temp_c": 50.0, "throttled": 0,
        "energy": {"mj_per_inference": 1.5, "measured": True, "source": "um25c"},
    }  # fmt: skip
    rec.update(kw)
    return rec


def seeded(target: str | Path) -> Registry:
    reg = Registry(target)
    reg.add_model(ModelRow("digits", "/src/digits.keras", "f" * 64, {"accuracy": 0.97}))
    reg.add_variant(variant(accuracy=0.965, operators=[{"name": "CONV_2D", "version": 3}]))
    reg.upsert_device("pi-01", hardware_class=CLS, board="rpi4b", runtime="ai-edge-litert")
    return reg


def test_fresh_file_is_created_at_the_current_schema_with_wal_and_foreign_keys(tmp_path):
    with Registry(tmp_path / "r.db") as reg:
        assert reg.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        assert reg._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert reg._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(sqlite3.IntegrityError):  # variant of an unknown model
            reg.add_variant(variant())
    with Registry(tmp_path / "r.db") as again:  # idempotent open
        assert again.schema_version == SCHEMA_VERSION


def test_a_version_1_file_migrates_to_current_keeping_its_rows(tmp_path):
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "\nPRAGMA user_version = 1;")
    db.execute("INSERT INTO models VALUES ('digits', '/src', 'ff', '{\"accuracy\": 0.97}')")
    db.execute(
        "INSERT INTO variants (id, model, recipe, path, sha256, size, quantization, accuracy) "
        "VALUES ('v-int8', 'digits', 'int8', '/v', ?, 20000, 'int8', 0.96)",
        ("a" * 64,),
    )
    db.execute("INSERT INTO hardware_classes VALUES (?, 'rpi4b-cpu', 'rpi4b', 'raspberrypi', "
               "'cpu', 'ai-edge-litert', '')", (CLS,))  # fmt: skip
    db.execute("INSERT INTO devices (id, hardware_class) VALUES ('pi-01', ?)", (CLS,))
    db.execute(
        "INSERT INTO telemetry_windows (device, seq, class_id, model_sha256, ts, inferences, "
        "p95_ms, rss_mb) VALUES ('pi-01', 1, ?, ?, 5.0, 50, 7.5, 40.0)",
        (CLS, "a" * 64),
    )
    db.execute("INSERT INTO releases VALUES ('digits', 4)")
    db.commit()
    db.close()

    with Registry(path) as reg:
        assert reg.schema_version == SCHEMA_VERSION
        v = reg.variant("v-int8")
        assert v is not None and v.accuracy == 0.96
        st = reg.class_stats(CLS, "v-int8")
        assert (st.windows, st.inferences, st.p95_ms, st.peak_memory_mb) == (1, 50, 7.5, 40.0)
        assert reg.next_release("digits") == 5
        did = reg.record_decision("digits", CLS, action="deploy", variant="v-int8",
                                  reason="r", evidence={"k": 1})  # fmt: skip
        assert did == 1  # tables added by migration 2 work
        cols = {r[1] for r in reg._db.execute("PRAGMA table_info(telemetry_windows)")}
        assert "window_s" in cols


def test_a_file_from_a_newer_edgeloop_is_refused_untouched(tmp_path):
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(ConfigError, match="newer"):
        Registry(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5


def test_telemetry_is_deduplicated_by_device_and_seq(registry_target):
    with seeded(registry_target) as reg:
        assert reg.record_telemetry("pi-01", window(1)) is True
        assert reg.record_telemetry("pi-01", window(1, inferences=999)) is False  # redelivery
        assert reg.record_telemetry("pi-01", window(2)) is True
        reg.upsert_device("pi-02", hardware_class=CLS)
        assert reg.record_telemetry("pi-02", window(1)) is True  # same seq, other device
        st = reg.class_stats(CLS, "v-int8")
        assert (st.windows, st.inferences) == (3, 300)
        with pytest.raises(ProtocolError):
            reg.record_telemetry("pi-01", {"ts": 1.0})
        with pytest.raises(ProtocolError):
            reg.record_telemetry("pi-01", window(True))  # a bool is not a seq


def test_class_stats_weights_windows_and_keeps_the_worst_memory(registry_target):
    with seeded(registry_target) as reg:
        reg.record_telemetry("pi-01", window(1, inferences=100, latency_ms={"p50": 2, "p95": 3}))
        reg.record_telemetry("pi-01", window(2, inferences=300, latency_ms={"p50": 2, "p95": 4},
                                             rss_mb=70.0, temp_c=51.0))  # fmt: skip
        reg.record_telemetry("pi-01", window(3, inferences=50, latency_ms={"p50": 2, "p95": 30},
                                             energy={"mj_per_inference": 3.0, "measured": False},
                                             temp_c=52.5))  # fmt: skip
        reg.record_telemetry("pi-01", window(4, inferences=0, latency_ms=None))  # idle window
        st = reg.class_stats(CLS, "v-int8")
        assert st.windows == 3 and st.inferences == 450
        assert st.p95_ms == 4.0  # weighted median: one slow window does not move it
        assert st.p95_max_ms == 30.0
        assert st.peak_memory_mb == 70.0 and st.peak_rss_mb == 90.0
        assert st.mj_per_inference == pytest.approx((1.5 * 400 + 3.0 * 50) / 450)
        assert st.energy_measured is False  # one window was estimated
        assert st.recent_temps_c[-3:] == (51.0, 52.5, 50.0)
        since = reg.class_stats(CLS, "v-int8", since=1000.0 + 25)
        assert since.windows == 1 and since.p95_ms == 30.0
        assert reg.class_stats(CLS, "unknown-variant").windows == 0


def test_release_counter_is_monotonic_and_persisted(registry_target):
    with Registry(registry_target) as reg:
        assert [reg.next_release("digits") for _ in range(3)] == [1, 2, 3]
        assert reg.next_release("other") == 1
        assert reg.next_release("digits", at_least=10) == 10  # past a device's accepted release
        assert reg.next_release("fresh", at_least=7) == 7
    with Registry(registry_target) as reg:
        assert reg.next_release("digits") == 11


def test_state_message_registers_device_and_class(registry_target):
    hw = detect(HWTREES / "rpi4b-coral-usb").to_dict()
    state = {"online": True, "hardware": hw, "hardware_class": "rpi4b-edgetpu-usb",
             "runtime": {"name": "ai-edge-litert", "version": "2.3.0"}}  # fmt: skip
    with Registry(registry_target) as reg:
        dev = reg.upsert_device_from_state("pi-07", state, now=123.0)
        cid = class_id("rpi4b-edgetpu-usb", "ai-edge-litert")
        assert dev.hardware_class == cid and dev.online and dev.last_seen == 123.0
        assert dev.accelerator == "edgetpu:usb:0" and dev.runtime_version == "2.3.0"
        hc = reg.hardware_class(cid)
        assert hc is not None
        assert (hc.board, hc.board_family, hc.accelerator) == ("rpi4b", "raspberrypi", "edgetpu")
        dead = reg.upsert_device_from_state("pi-07", {"online": False, "reason": "lwt"})
        assert not dead.online and dead.hardware_class == cid and dead.state["hardware"]
    assert HardwareClass.from_id("x86_64-edgetpu-pci/tensorflow").board == "x86_64"


def test_restart_mid_loop_keeps_deployments_decisions_and_telemetry(registry_target):
    path = registry_target
    reg = seeded(path)
    release = reg.next_release("digits")
    dep = reg.record_deployment("pi-01", "v-int8", release, "m" * 64, started=50.0)
    reg.record_decision("digits", CLS, action="deploy", variant="v-int8", reason="first guess",
                        evidence={"predicted": {"p95_ms": 4.1}})  # fmt: skip
    reg.record_telemetry("pi-01", window(1))
    reg.close()  # the host dies here

    reg = Registry(path)
    reg.record_telemetry("pi-01", window(1))  # redelivered from the device's outbox
    reg.record_telemetry("pi-01", window(2))
    reg.finish_deployment(dep, "rolled_back", "trial p95 over target")
    assert reg.class_stats(CLS, "v-int8").windows == 2
    assert reg.rolled_back_variants(CLS, "digits") == {"v-int8": "trial p95 over target"}
    assert [d.evidence for d in reg.decisions("digits", CLS)] == [{"predicted": {"p95_ms": 4.1}}]
    assert reg.next_release("digits") == release + 1
    with pytest.raises(ValueError):
        reg.finish_deployment(dep, "exploded")
    reg.close()


def test_rollout_rows_round_trip(registry_target):
    with seeded(registry_target) as reg:
        rid = reg.create_rollout("digits", "v-int8", class_id=CLS, state="canary", waves=[1, "50%"],
                                 counts={"notified": 1}, plan={"state": "canary"})  # fmt: skip
        reg.set_rollout_device(rid, "pi-01", wave=0, state="notified")
        reg.set_rollout_device(rid, "pi-01", wave=0, state="committed")
        reg.update_rollout(rid, state="done", counts={"committed": 1}, plan={"state": "done"})
        row = reg.rollout(rid)
        assert row is not None and row.state == "done" and row.waves == [1, "50%"]
        assert [(d.device, d.state) for d in reg.rollout_devices(rid)] == [("pi-01", "committed")]


def test_threads_share_one_registry(registry_target):
    with seeded(registry_target) as reg:

        def feed(base: int) -> None:
            for i in range(25):
                reg.record_telemetry("pi-01", window(base + i))

        threads = [threading.Thread(target=feed, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert reg.class_stats(CLS, "v-int8").windows == 100


def test_a_re_added_variant_replaces_its_row(registry_target):
    with seeded(registry_target) as reg:
        reg.add_variant(variant(accuracy=0.5, available=False, unavailable_reason="gone"))
        v = reg.variant("v-int8")
        assert v is not None and v.accuracy == 0.5 and not v.available
        assert v.unavailable_reason == "gone" and v.operators == []


def test_two_hosts_allocating_releases_at_once_never_share_one(registry_target):
    Registry(registry_target).close()
    got: list[int] = []

    def allocate() -> None:
        with Registry(registry_target) as reg:  # its own connection, as another host
            got.extend(reg.next_release("digits") for _ in range(20))

    threads = [threading.Thread(target=allocate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 61))


@pytest.mark.postgres
def test_postgres_database_is_migrated_once_even_by_racing_hosts(pg_url):
    import psycopg

    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            Registry(pg_url).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Registry(pg_url) as reg:
        assert reg.engine == "postgresql" and reg.schema_version == SCHEMA_VERSION
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # variant of an unknown model
            reg.add_variant(variant())
        reg.add_model(ModelRow("digits", "/src", "f" * 64, {}))
        reg.upsert_device("pi-01", hardware_class=CLS)
        reg.record_telemetry("pi-01", window(1, ts=1_700_000_000.123))
        # REAL is DOUBLE PRECISION there: a timestamp keeps its milliseconds
        assert reg.windows(CLS, "a" * 64)[0].ts == 1_700_000_000.123
        with psycopg.connect(pg_url) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM edgeloop_schema").fetchone() or (0,)
            assert n == 1


@pytest.mark.postgres
def test_a_postgres_database_from_a_newer_edgeloop_is_refused_untouched(pg_url):
    import psycopg

    Registry(pg_url).close()
    with psycopg.connect(pg_url) as db:
        db.execute("UPDATE edgeloop_schema SET version = %s", (SCHEMA_VERSION + 5,))
    with pytest.raises(ConfigError, match="newer"):
        Registry(pg_url)
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM edgeloop_schema").fetchone() == (SCHEMA_VERSION + 5,)


@pytest.mark.postgres
def test_a_bad_postgres_url_names_the_registry_without_its_password(pg_server):
    url = f"postgresql://edgeloop:s3cret@127.0.0.1:{pg_server.port}/no_such_db"
    with pytest.raises(ConfigError, match="no_such_db") as err:
        Registry(url)
    assert "s3cret" not in str(err.value) and "***" in str(err.value)
