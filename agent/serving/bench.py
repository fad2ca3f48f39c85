"""Benchmark-grade measurement of one model, following TFLite's ``benchmark_model`` protocol.

Protocol (``benchmark``):

1. RSS before load (psutil), the model file inspected and checked for compatibility with the
   active runtime (ModelFileError / IncompatibleModelError propagate: bad input, exit 2).
2. ``agent.runtime.load_model`` (interpreter + delegate + ``allocate_tensors()``): its
   ``init_ms`` is the init time; RSS after load.
3. Inputs from ``agent.runtime.inputs.random_inputs`` (per dtype and quantization), generated once
and
   set once with ``set_tensor`` before any timing; the inputs do not change between runs, as
   in ``benchmark_model``.
4. First inference, timed alone (``first_ms``).
5. Warm-up: at least ``warmup_runs`` runs and at least ``warmup_seconds`` (capped at
   ``max_seconds``), not recorded.
6. Timed runs: at least ``runs`` runs and at least ``min_seconds`` of wall time, stopping
   early only at ``max_seconds``. Each sample is ``time.perf_counter_ns()`` immediately
   around ``interpreter.invoke()`` and nothing else; statistics (``agent.serving.stats``): min, max,
   mean, population std, p5/p50/p90/p95/p99 in milliseconds, linear interpolation.
7. Context: ``thermal.snapshot`` (governor, frequency, temperature, throttling) right before
   the timed runs (``context``) and right after (``context_end``).

RSS before load is taken after returning freed heap pages to the OS (``malloc_trim``), so it
does not depend on what the process did earlier. Peak memory: the kernel's own high-water mark.
We reset it by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) just before loading
and read ``VmHWM`` from ``/proc/self/status`` after the runs: exact, zero overhead, and it
cannot miss a short spike the way a sampler can. It is the whole process's peak during load +
runs (other threads in the agent count too). ``ru_maxrss`` is the same counter but cannot be
reset, so in a long-lived process it would report an older, larger peak. Where ``clear_refs``
is not writable we fall back to a sampling thread (psutil RSS every 10 ms, which can miss
spikes shorter than that);
``memory_mb.peak_method`` says which was used.

Runs in-process: the sandbox (``agent.runtime.sandbox.probe_model``) is for the first load of an
untrusted model; ``benchmark`` is for a model that already passed it (the CLI probes first).
Energy: pass ``meter``, either an ``agent.energy`` Meter (an EnergySampler is started on it
before the load, its idle baseline taken while nothing runs, and stopped at the end) or an
EnergySampler the caller already runs. The timed phase is the energy window (bounded by
``time.monotonic()``); a meter reading at 1-2 Hz needs ``min_seconds`` of 10 s or more for a
meaningful figure. Without a meter ``energy`` is None.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from agent.errors import ConfigError, EdgeloopError
from agent.runtime.sandbox import compat_delegate
from agent.serving.stats import Summary, ns_to_ms, summarize
from agent.wire.record import Record

log = logging.getLogger(__name__)

MB = 1024.0 * 1024.0
SAMPLE_INTERVAL_S = 0.010


@dataclass(frozen=True)
class MemoryUsage(Record):
    """Resident memory in MB: before load, after load, peak during load + runs."""

    rss_before: float
    rss_after_load: float
    peak: float
    model: float  # rss_after_load - rss_before
    peak_method: str  # "vmhwm" (kernel high-water mark) | "sampled"


@dataclass(frozen=True)
class BenchResult:
    """One benchmark; ``to_dict()`` is what ``edge-agent bench --json`` prints."""

    model: str
    sha256: str
    size_bytes: int
    quantization: str
    latency: Summary
    init_ms: float
    first_ms: float
    warmup_runs: int
    warmup_s: float
    runs: int
    elapsed_s: float
    memory: MemoryUsage
    runtime: dict[str, Any]
    delegate: dict[str, Any]
    threads: int
    inputs: list[dict[str, Any]]
    context: dict[str, Any]
    context_end: dict[str, Any]
    energy: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("latency", "memory", "context", "context_end")
        }
        out["latency_ms"] = self.latency.to_dict()
        out["memory_mb"] = self.memory.to_dict()
        out["context"] = dict(self.context)
        out["context_end"] = dict(self.context_end)
        return out


class _PeakTracker:
    """Peak RSS of this process from ``start()`` to ``stop()`` (see the module docstring)."""

    def __init__(self, proc: psutil.Process) -> None:
        self._proc = proc
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.method = "vmhwm"

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if _vm_hwm() is None:
                raise OSError("no VmHWM")
        except OSError:
            self.method = "sampled"
            self._peak = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            return max(self._peak, int(self._proc.memory_info().rss))
        return max(_vm_hwm() or 0, int(self._proc.memory_info().rss))


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Reading the model file (``modelfile.inspect``) leaves its freed bytes resident when glibc's
    dynamic mmap threshold has grown, so without this ``rss_before`` depended on what the
    process did earlier (measured: +13 MB for MobileNet v2 fp32 in a long-lived process).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_params(
    runs: int, min_seconds: float, warmup_runs: int, warmup_seconds: float, max_seconds: float
) -> None:
    problems = []
    if runs < 1:
        problems.append(f"runs must be >= 1 (got {runs})")
    if warmup_runs < 0:
        problems.append(f"warmup_runs must be >= 0 (got {warmup_runs})")
    if min_seconds < 0 or warmup_seconds < 0:
        problems.append("min_seconds and warmup_seconds must be >= 0")
    if max_seconds <= 0 or max_seconds < min_seconds:
        problems.append(f"max_seconds must be > 0 and >= min_seconds (got {max_seconds})")
    if problems:
        raise ConfigError(
            "invalid benchmark parameters: " + "; ".join(problems),
            hint="see `edge-agent bench --help`",
        )


def _loop(
    invoke: Any, min_runs: int, min_ns: int, max_ns: int, record: bool
) -> tuple[list[int], int, int]:
    """Invoke until >= min_runs and >= min_ns, or max_ns; returns (samples, count, wall ns)."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    count = 0
    start = clock()
    elapsed = 0
    while (count < min_runs or elapsed < min_ns) and elapsed < max_ns:
        t0 = clock()
        invoke()
        t1 = clock()
        if record:
            append(t1 - t0)
        count += 1
        elapsed = t1 - start
    return samples, count, elapsed


def _start_energy(meter: Any | None) -> tuple[Any | None, bool]:
    """(sampler, owned): a started EnergySampler with its idle baseline, or the caller's own."""
    if meter is None:
        return None, False
    if hasattr(meter, "window"):  # an EnergySampler the caller started (and will stop)
        return meter, False
    from agent.energy import EnergySampler

    sampler = EnergySampler(meter).start()
    # Idle baseline over the sampler's first baseline_s, taken before the model is loaded.
    sampler.wait_baseline(timeout=sampler.baseline_s + 10 * sampler.meter.interval_s)
    return sampler, True


def _energy(sampler: Any | None, t0: float, t1: float, inferences: int) -> dict[str, Any] | None:
    if sampler is None:
        return None
    try:
        if hasattr(sampler, "wait_sample_after"):
            sampler.wait_sample_after(t1, timeout=max(2.0, 3 * sampler.meter.interval_s))
        result: dict[str, Any] = sampler.window(t0, t1, inferences).to_dict()
        return result
    except EdgeloopError as exc:
        log.warning("energy for the benchmark window is missing: %s", exc)
        return {"missing_reason": str(exc), "measured": False}


def benchmark(
    model: str | Path,
    request: str = "auto",
    *,
    threads: int | None = None,
    runs: int = 50,
    min_seconds: float = 1.0,
    warmup_runs: int = 1,
    warmup_seconds: float = 0.5,
    max_seconds: float = 150.0,
    hw_root: str | Path = "/",
    meter: Any | None = None,
    seed: int = 0,
) -> BenchResult:
    """Measure ``model`` in this process (it must have passed
    ``agent.runtime.sandbox.probe_model``)."""
    from agent.board import hardware, thermal
    from agent.runtime import compat, get_backend, load_model, modelfile
    from agent.runtime.inputs import random_inputs

    _check_params(runs, min_seconds, warmup_runs, warmup_seconds, max_seconds)
    proc = psutil.Process()
    info = modelfile.inspect(Path(model))
    backend = get_backend()
    hw = hardware.detect(hw_root)
    delegate = compat_delegate(request, info, hw)
    compat.ensure_compatible(info, backend.name, backend.version, delegate)

    sampler, owned = _start_energy(meter)
    _trim_heap()
    rss_before = proc.memory_info().rss
    peak = _PeakTracker(proc)
    peak.start()
    try:
        loaded = load_model(
            model, request, threads=threads, hardware=hw, backend=backend, info=info
        )
        rss_after = proc.memory_info().rss
        interp = loaded.interpreter
        details = interp.get_input_details()
        inputs = random_inputs(details, np.random.default_rng(seed))
        for detail, value in zip(details, inputs, strict=True):
            interp.set_tensor(detail["index"], value)

        t0 = time.perf_counter_ns()
        interp.invoke()
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        max_ns = int(max_seconds * 1e9)
        _, n_warm, warm_ns = _loop(
            interp.invoke, warmup_runs, int(warmup_seconds * 1e9), max_ns, record=False
        )
        context = thermal.snapshot(hw_root).to_dict()
        mono0 = time.monotonic()
        samples, n_runs, run_ns = _loop(
            interp.invoke, runs, int(min_seconds * 1e9), max_ns, record=True
        )
        mono1 = time.monotonic()
        context_end = thermal.snapshot(hw_root).to_dict()
        energy = _energy(sampler, mono0, mono1, n_runs)
    finally:
        peak_bytes = peak.stop()
        if owned and sampler is not None:
            sampler.stop()
    if n_runs < runs or run_ns < min_seconds * 1e9:
        log.warning("benchmark stopped at max_seconds=%s after %d runs", max_seconds, n_runs)
    return BenchResult(
        model=str(model),
        sha256=info.sha256,
        size_bytes=info.size,
        quantization=info.quantization,
        latency=summarize(ns_to_ms(samples)),
        init_ms=float(loaded.init_ms),
        first_ms=first_ms,
        warmup_runs=n_warm,
        warmup_s=warm_ns / 1e9,
        runs=n_runs,
        elapsed_s=run_ns / 1e9,
        memory=MemoryUsage(
            rss_before=rss_before / MB,
            rss_after_load=rss_after / MB,
            peak=peak_bytes / MB,
            model=(rss_after - rss_before) / MB,
            peak_method=peak.method,
        ),
        runtime={"name": loaded.runtime, "version": loaded.runtime_version},
        delegate=loaded.to_dict(),
        threads=loaded.threads,
        inputs=[
            {"name": str(d.get("name")), "shape": list(v.shape), "dtype": str(v.dtype)}
            for d, v in zip(details, inputs, strict=True)
        ],
        context=context,
        context_end=context_end,
        energy=energy,
    )
