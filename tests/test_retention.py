"""Retention on both engines: old raw windows become hourly roll-ups with the loop's
statistics, in whole hours, never the current one; late windows fold in; a count cap holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.cli import main
from deploy.fleet.registry import Registry
from deploy.fleet.retention import HOUR, RetentionPolicy, apply_retention, hourly
from deploy.fleet.windows import window_counts
from tests import records

CLS = "rpi4b-cpu/ai-edge-litert"
SHA = "a" * 64
T0 = 1_700_000_000 // HOUR * HOUR  # an hour boundary


def window(seq: int, ts: float, **kw: Any) -> dict[str, Any]:
    """A 10-minute window on SHA as the agent sends it; ``kw`` overrides any field."""
    energy = {"mj_per_inference": 1.5, "measured": True}
    base: dict[str, Any] = {"window_s": 600.0, "sha": SHA, "p50": 2.0, "p95": 3.0,
                            "energy": energy, "peak_rss_mb": 90.0}  # fmt: skip
    return records.telemetry(seq, ts, **(base | kw))


def fill(reg: Registry) -> None:
    """Two devices, a window every 10 minutes for three hours (T0 .. T0 + 3 h)."""
    for dev in ("pi-01", "pi-02"):
        reg.upsert_device(dev, hardware_class=CLS)
        for k in range(18):
            extra: dict[str, Any] = {}
            if dev == "pi-02" and k == 1:  # a slow, hot, big window in hour 0
                extra = {
                    "latency_ms": {"p50": 4.0, "p95": 30.0}, "temp_c": 85.0, "rss_mb": 80.0,
                    "inferences": 300, "energy": {"mj_per_inference": 3.0, "measured": False},
                }  # fmt: skip
            reg.record_telemetry(dev, window(k, T0 + k * 600 + 1, **extra))


def test_old_hours_become_rollups_with_the_loops_statistics(registry_target):
    with Registry(registry_target) as reg:
        fill(reg)
        res = apply_retention(reg, RetentionPolicy(keep_s=1.5 * HOUR), now=T0 + 3 * HOUR + 60)
        # 3 h 1 min - 1.5 h -> cut at T0 + 1 h: hour 0 rolled up, hours 1 and 2 kept raw
        assert res.cutoff == T0 + HOUR and res.rolled_up == 12 and res.hours == 1
        assert res.kept == 24 and sum(n for n, _lo, _hi in window_counts(reg).values()) == 24
        (h,) = hourly(reg, CLS, SHA)
        assert h.hour_start == T0 and h.windows == 12 and h.inferences == 11 * 100 + 300
        assert h.p95_ms == pytest.approx((3.0 * 1100 + 30.0 * 300) / 1400)  # weighted mean
        assert h.p50_ms == pytest.approx((2.0 * 1100 + 4.0 * 300) / 1400)
        assert h.p95_max_ms == 30.0 and h.peak_memory_mb == 80.0 and h.peak_rss_mb == 90.0
        assert h.mj_per_inference == pytest.approx((1.5 * 1100 + 3.0 * 300) / 1400)
        assert h.energy_basis == "gross" and h.energy_measured is False
        assert h.hot_windows == 1 and h.temp_max_c == 85.0 and h.errors == 0
        # the raw statistics of what is kept are untouched
        assert reg.class_stats(CLS, SHA).windows == 24
        again = apply_retention(reg, RetentionPolicy(keep_s=1.5 * HOUR), now=T0 + 3 * HOUR + 60)
        assert (again.rolled_up, again.kept) == (0, 24)  # idempotent
        assert hourly(reg, CLS, SHA)[0].inferences == 1400


def test_a_late_window_folds_into_its_hour_and_the_current_hour_stays_raw(registry_target):
    with Registry(registry_target) as reg:
        fill(reg)
        now = T0 + 3 * HOUR + 60
        apply_retention(reg, RetentionPolicy(keep_s=0), now=now)  # all but the current hour
        assert [h.hour_start for h in hourly(reg, CLS, SHA)] == [T0, T0 + HOUR, T0 + 2 * HOUR]
        assert sum(n for n, _lo, _hi in window_counts(reg).values()) == 0
        reg.record_telemetry("pi-01", window(99, T0 + 30, inferences=50))  # from an outbox
        reg.record_telemetry("pi-01", window(100, now - 30))  # the current hour
        res = apply_retention(reg, RetentionPolicy(keep_s=0), now=now)
        assert res.rolled_up == 1 and res.kept == 1
        h0 = hourly(reg, CLS, SHA)[0]
        assert h0.windows == 13 and h0.inferences == 1450


def test_a_count_cap_drops_whole_hours_oldest_first(registry_target):
    with Registry(registry_target) as reg:
        fill(reg)
        res = apply_retention(
            reg, RetentionPolicy(keep_s=30 * 86400, keep_windows=20), now=T0 + 3 * HOUR + 60
        )
        assert res.cutoff == T0 + 2 * HOUR and res.kept == 12 <= 20
        assert [h.windows for h in hourly(reg, CLS, SHA)] == [12, 12]


def test_retention_command_prints_what_it_did(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    with Registry(path) as reg:
        fill(reg)  # windows from 2023: all older than a week
    assert main(["retention", "--registry", str(path), "--keep-days", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rolled_up"] == 36 and out["kept"] == 0 and out["hours"] == 3
    assert main(["retention", "--registry", str(path), "--keep-days", "-1"]) == 2
    assert "negative" in capsys.readouterr().err
