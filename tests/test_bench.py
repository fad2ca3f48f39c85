"""agent.serving.bench: the benchmark_model protocol, real interpreter (short runs; no timing
asserts)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError, ModelFileError
from agent.serving.bench import _loop, benchmark
from tests.modelzoo import model


@pytest.fixture(scope="module")
def digits_result() -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = benchmark(
        model("digits_fp32"),
        "cpu",
        threads=1,
        runs=30,
        min_seconds=0.3,
        warmup_runs=3,
        warmup_seconds=0.1,
    )
    return result.to_dict(), time.perf_counter() - started


@pytest.mark.runtime
def test_result_has_the_documented_fields(digits_result: tuple[dict[str, Any], float]) -> None:
    out, _ = digits_result
    json.dumps(out)  # JSON-safe as printed by `edge-agent bench --json`
    for key in (
        "latency_ms",
        "init_ms",
        "first_ms",
        "runs",
        "memory_mb",
        "runtime",
        "delegate",
        "threads",
        "context",
        "energy",
    ):
        assert key in out
    assert set(out["latency_ms"]) >= {"min", "max", "mean", "std", "p5", "p50", "p90", "p95", "p99"}
    assert set(out["memory_mb"]) >= {"rss_before", "rss_after_load", "peak"}
    assert out["runtime"]["name"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert out["runtime"]["version"]
    assert out["delegate"]["delegate"] == "cpu" and out["threads"] == 1
    assert "interpreter" not in out["delegate"]
    assert out["energy"] is None
    assert {"governor", "freq_mhz", "temp_c", "throttled"} <= set(out["context"])


@pytest.mark.runtime
def test_protocol_invariants(digits_result: tuple[dict[str, Any], float]) -> None:
    out, wall_s = digits_result
    lat = out["latency_ms"]
    assert 0 < lat["min"] <= lat["p5"] <= lat["p50"] <= lat["p90"] <= lat["p95"]
    assert lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert out["runs"] >= 30 and lat["count"] == out["runs"]
    assert out["elapsed_s"] >= 0.3  # the timed phase lasted at least min_seconds ...
    assert out["warmup_runs"] >= 3 and out["warmup_s"] >= 0.1  # ... and so did the warm-up
    assert wall_s >= out["elapsed_s"] + out["warmup_s"]  # measured by the harness, not trusted
    # invoke-only samples cannot add up to more than the loop's wall time
    assert lat["mean"] * out["runs"] <= out["elapsed_s"] * 1000.0 + 1e-6
    assert out["init_ms"] > 0 and out["first_ms"] > 0


@pytest.mark.runtime
def test_memory_numbers(digits_result: tuple[dict[str, Any], float]) -> None:
    mem = digits_result[0]["memory_mb"]
    assert mem["rss_before"] > 0 and mem["rss_after_load"] > 0
    assert mem["peak"] >= mem["rss_after_load"] - 1.0  # same counter family, page-rounding slack
    assert mem["peak_method"] in ("vmhwm", "sampled")


@pytest.mark.runtime
def test_inputs_follow_the_model(digits_result: tuple[dict[str, Any], float]) -> None:
    (inp,) = digits_result[0]["inputs"]
    assert inp["dtype"] == "float32" and inp["shape"][1:] == [8, 8, 1]


@pytest.mark.runtime
def test_max_seconds_caps_the_runs() -> None:
    started = time.perf_counter()
    out = benchmark(
        model("digits_int8"),
        "cpu",
        threads=1,
        runs=10**9,
        min_seconds=0.2,
        warmup_runs=1,
        warmup_seconds=0.0,
        max_seconds=0.2,
    ).to_dict()
    assert 1 <= out["runs"] < 10**9
    assert out["elapsed_s"] >= 0.2
    assert time.perf_counter() - started < 60  # it did stop


def test_loop_stops_on_count_and_time() -> None:
    calls: list[int] = []
    samples, count, elapsed = _loop(lambda: calls.append(1), 5, 0, 10**12, record=True)
    assert count == len(samples) == len(calls) == 5
    samples, count, elapsed = _loop(lambda: None, 1, 20_000_000, 10**12, record=False)
    assert samples == [] and count >= 1 and elapsed >= 20_000_000


def test_bad_parameters_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="runs"):
        benchmark("whatever.tflite", runs=0)


@pytest.mark.runtime
def test_not_a_model_is_a_model_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelFileError):
        benchmark(bad, runs=1, min_seconds=0)


def _spike_mb() -> float:
    """Allocate and touch ~60 MB, free it; returns the size in MB."""
    import numpy as np

    block = np.ones(60 * 1024 * 1024 // 8)
    del block
    return 60.0


def test_peak_tracker_catches_a_freed_spike() -> None:
    import psutil

    from agent.serving.bench import MB, _PeakTracker

    proc = psutil.Process()
    tracker = _PeakTracker(proc)
    before = proc.memory_info().rss
    tracker.start()
    size = _spike_mb()
    peak = tracker.stop()
    if tracker.method != "vmhwm":
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert proc.memory_info().rss < before + size * MB / 2  # the spike is gone ...
    assert peak >= before + 0.8 * size * MB  # ... but the high-water mark kept it


def test_peak_tracker_sampling_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import psutil

    import agent.serving.bench as bench

    monkeypatch.setattr(bench, "_vm_hwm", lambda: None)  # as if /proc had no VmHWM
    proc = psutil.Process()
    tracker = bench._PeakTracker(proc)
    before = proc.memory_info().rss
    tracker.start()
    assert tracker.method == "sampled"
    block = np.ones(60 * 1024 * 1024 // 8)
    deadline = time.monotonic() + 10
    while tracker._peak < before + 50 * bench.MB and time.monotonic() < deadline:
        time.sleep(0.005)  # wait for the sampler thread to see the block (polled, bounded)
    del block
    peak = tracker.stop()
    assert peak >= before + 50 * bench.MB
