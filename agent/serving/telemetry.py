"""Telemetry records: one per window, from the real inferences of that window plus system state.

Latency percentiles come from :mod:`agent.serving.stats` (the same definition as ``edge-agent
bench``);
system state from psutil and :mod:`agent.board.thermal`; energy from the configured meter's sampler
(:mod:`agent.energy`) when there is one. The record layout is documented in docs/protocol.md.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Any, Protocol, cast

import psutil

from agent.board import thermal
from agent.errors import EdgeloopError
from agent.serving.server import WindowSnapshot
from agent.serving.stats import summarize
from agent.wire.messages import ModelRef, Telemetry

log = logging.getLogger(__name__)


class EnergySource(Protocol):
    def window(self, t0: float, t1: float, inferences: int) -> Any: ...


def open_energy(spec: str, baseline_s: float) -> Any:
    """The running energy sampler of the meter ``spec``, or None (logged) when it is
    unavailable: telemetry goes on without energy. agent.energy loads only when configured."""
    try:
        from agent.energy import EnergySampler, open_meter

        return EnergySampler(open_meter(spec), baseline_s=baseline_s).start()
    except EdgeloopError as exc:
        log.error("energy meter %s unavailable: %s (telemetry goes on without it)", spec, exc)
        return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


class TelemetryBuilder:
    """Turns a drained :class:`WindowSnapshot` into the wire record (:class:`Telemetry`)."""

    def __init__(self, hw_root: str | Path = "/", energy: EnergySource | None = None) -> None:
        self.hw_root = hw_root
        self.energy = energy
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # first call primes the counter

    def latency_fields(self, snap: WindowSnapshot) -> dict[str, Any]:
        if not snap.latencies_ms:
            return {"latency_ms": None, "throughput": 0.0}
        s = summarize(snap.latencies_ms)
        span = max(snap.ended - snap.started, 1e-9)
        return {
            "latency_ms": {
                "p50": _round(s.p50),
                "p90": _round(s.p90),
                "p95": _round(s.p95),
                "p99": _round(s.p99),
                "max": _round(s.max),
                "mean": _round(s.mean),
            },
            "throughput": _round(snap.inferences / span),
        }

    def build(
        self,
        *,
        seq: int,
        snap: WindowSnapshot,
        model: ModelRef | None,
        outbox_dropped: int,
        model_mem_mb: float | None = None,
        boot_id: str | None = None,
        trial: bool = False,
        warmup: bool = False,
        threads: int | None = None,
    ) -> Telemetry:
        try:
            rss_mb = self._proc.memory_info().rss / 2**20
            cpu_pct = self._proc.cpu_percent(None)
        except psutil.Error:  # pragma: no cover - our own process
            rss_mb, cpu_pct = None, None
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        therm = thermal.snapshot(self.hw_root)
        return Telemetry(
            seq=seq,
            ts=round(time.time(), 3),
            window_s=round(snap.ended - snap.started, 3),
            model=model,
            inferences=snap.inferences,
            errors=snap.errors,
            non_finite=snap.non_finite,
            **self.latency_fields(snap),
            rss_mb=_round(rss_mb, 1),
            peak_rss_mb=_round(peak_mb, 1),
            model_mem_mb=_round(model_mem_mb, 1),
            cpu_pct=_round(cpu_pct, 1),
            temp_c=therm.temp_c,
            freq_mhz=therm.freq_mhz,
            governor=therm.governor,
            throttled=therm.throttled,
            thermal=therm.to_dict(),
            energy=self._energy(snap),
            outbox_dropped=outbox_dropped,
            boot_id=boot_id,
            trial=trial,
            warmup=warmup,
            threads=threads,
        )

    def _energy(self, snap: WindowSnapshot) -> dict[str, Any] | None:
        if self.energy is None:
            return None
        try:
            window = self.energy.window(snap.started, snap.ended, snap.inferences)
            return cast(dict[str, Any], window.to_dict())
        except Exception as exc:  # a meter fault never stops telemetry
            log.warning("energy window failed: %s", exc)
            return {"missing_reason": f"meter error: {exc}", "measured": False}
