"""One sampling thread per meter, an idle baseline, and energy per inference over a window.

Arithmetic (all times ``time.monotonic()`` seconds, the clock inference timing uses):

- A sample's watts hold until the next sample, but never longer than ``max_hold_s``; time not
  covered by any sample is a gap (meter unplugged or silent).
- ``avg_w`` = integral of held power over the covered part of [t0, t1] / covered time.
- ``mj_per_inference`` (gross) = avg_w x (t1 - t0) / inferences x 1000.
- ``mj_per_inference_net`` = (avg_w - idle_w) x (t1 - t0) / inferences x 1000: what the inferences
  cost on top of the board sitting idle; ``None`` with ``net_missing_reason`` when the window is
  not above idle by more than ``min_net_w`` (:mod:`agent.energy.net`): never negative.
  ``basis`` says which figure stands for the window: ``net`` where one exists, else ``gross``.
- ``idle_w`` is measured over the first ``baseline_s`` of samples after start, and replaced by
  :meth:`EnergySampler.mark_idle_baseline` (a hint that the device was idle) or by any window of
  at least ``auto_idle_min_s`` with zero inferences. A window with inferences that overlaps
  the start-up span (a device that serves at once, e.g. after a reboot with a model) discards
  that baseline, or prevents it: ``idle_w`` then stays unknown (net energy missing) until an
  idle window or a hint provides one, rather than calling load "idle".

The thread never lets an exception escape: meter failures become ``missing_reason`` on the
windows they touch, and the meter is reconnected with exponential backoff and jitter.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent.energy.base import Meter, Sample, open_meter
from agent.energy.net import MIN_NET_W, basis, net_energy
from agent.energy.window import EnergyWindow, integrate
from agent.errors import MeterError

log = logging.getLogger(__name__)


class EnergySampler:
    """Samples one meter on a background thread and turns windows into energy per inference."""

    def __init__(
        self,
        meter: Meter | str,
        *,
        baseline_s: float = 5.0,
        max_hold_s: float | None = None,
        min_coverage: float = 0.5,
        history_s: float = 900.0,
        auto_idle_min_s: float = 2.0,
        min_net_w: float = MIN_NET_W,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.meter = open_meter(meter) if isinstance(meter, str) else meter
        self.baseline_s = baseline_s
        self.max_hold_s = (
            max_hold_s if max_hold_s is not None else max(3 * self.meter.interval_s, 2.0)
        )
        self.min_coverage = min_coverage
        self.history_s = history_s
        self.auto_idle_min_s = auto_idle_min_s
        self.min_net_w = min_net_w
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()
        self._lock = threading.RLock()  # predicates of wait_for() may call the queries
        self._cond = threading.Condition(self._lock)
        self._samples: list[Sample] = []
        self._errors: deque[tuple[float, str]] = deque(maxlen=1000)
        self._idle_w: float | None = None
        self._idle_source = ""
        self._busy_from: float | None = None  # earliest start of a window with inferences
        self._start_span: tuple[float, float] | None = None  # of the start-up baseline
        self._start_baseline_over = False  # the start-up baseline was taken or given up
        self._started_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0
        self.failing = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def source(self) -> str:
        return self.meter.source

    def start(self) -> EnergySampler:
        if self._thread is not None:
            return self
        self._stop.clear()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"energy-{self.meter.kind}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "energy sampler thread for %s did not stop in %.1f s", self.source, timeout
                )
        try:
            self.meter.close()
        except Exception as exc:
            log.debug("closing meter %s: %s", self.source, exc)

    def is_alive(self) -> bool:
        """True while the sampling thread runs (it survives every meter failure)."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EnergySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            t_call = time.monotonic()
            try:
                new = self.meter.read()
            except Exception as exc:  # a meter must never take the agent down
                self._on_error(exc)
                self._close_meter()
                delay = self._rng.uniform(backoff / 2, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                self._stop.wait(delay)
                continue
            backoff = self.backoff_initial_s
            self._on_samples(new)
            if not self.meter.streaming:
                self._stop.wait(max(0.0, self.meter.interval_s - (time.monotonic() - t_call)))

    def _close_meter(self) -> None:
        try:
            self.meter.close()
        except Exception as exc:
            log.debug("closing meter %s after an error: %s", self.source, exc)

    def _on_error(self, exc: Exception) -> None:
        code = exc.code if isinstance(exc, MeterError) else "meter_error"
        message = exc.message if isinstance(exc, MeterError) else f"{type(exc).__name__}: {exc}"
        reason = f"{code}: {message}"
        with self._cond:
            self._errors.append((time.monotonic(), reason))
            first = not self.failing
            self.failing = True
            self.reconnects += 1
        if first:
            log.warning(
                "energy meter %s failing, reconnecting with backoff: %s", self.source, reason
            )
        else:
            log.debug("energy meter %s still failing: %s", self.source, reason)

    def _on_samples(self, new: list[Sample]) -> None:
        if self.failing and new:
            log.info("energy meter %s is back", self.source)
        with self._cond:
            for s in new:
                if self._samples and s.t < self._samples[-1].t:
                    bisect.insort(self._samples, s, key=lambda x: x.t)
                else:
                    self._samples.append(s)
            if new:
                self.failing = False
            self._prune(time.monotonic())
            if self._idle_w is None:
                self._try_start_baseline()
            self._cond.notify_all()

    def _prune(self, now: float) -> None:
        cutoff = now - self.history_s
        if self._samples and self._samples[0].t < cutoff:
            k = bisect.bisect_left([s.t for s in self._samples], cutoff)
            del self._samples[: max(0, k - 1)]  # keep one to hold into the history window

    def _try_start_baseline(self) -> None:
        """Baseline from the first ``baseline_s`` of samples, unless inferences ran then."""
        if self._start_baseline_over or not self._samples:
            return
        t0 = self._samples[0].t
        end = t0 + self.baseline_s
        if self._busy_from is not None and self._busy_from < end:
            self._start_baseline_over = True
            log.info(
                "no start-up idle baseline for %s: inferences ran in its first %.1f s; idle_w "
                "waits for a window of >= %.1f s without inferences",
                self.source,
                self.baseline_s,
                self.auto_idle_min_s,
            )
            return
        if self._samples[-1].t < end:
            return
        part = integrate(self._samples, t0, end, self.max_hold_s)
        if part.covered_s >= self.min_coverage * self.baseline_s:
            self._idle_w = part.energy_j / part.covered_s
            self._idle_source = "start"
            self._start_span = (t0, end)
            self._start_baseline_over = True
            log.info(
                "idle baseline for %s: %.3f W (first %.1f s)",
                self.source,
                self._idle_w,
                self.baseline_s,
            )

    # -- queries -----------------------------------------------------------------------------

    @property
    def idle_w(self) -> float | None:
        with self._lock:
            return self._idle_w

    def samples(self, t0: float | None = None, t1: float | None = None) -> list[Sample]:
        with self._lock:
            return [
                s for s in self._samples if (t0 is None or s.t >= t0) and (t1 is None or s.t <= t1)
            ]

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(sampler)`` is true (checked on each new sample)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))

    def wait_baseline(self, timeout: float) -> float | None:
        """Block until the start-up idle baseline exists, was given up, or timeout; return it."""
        self.wait_for(lambda s: s._idle_w is not None or s._start_baseline_over, timeout)
        return self.idle_w

    def wait_sample_after(self, t: float, timeout: float) -> bool:
        """Block until a sample newer than ``t`` arrived (so a window ending at t is complete)."""
        return self.wait_for(lambda s: bool(s._samples) and s._samples[-1].t > t, timeout)

    def mark_idle_baseline(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """The device was idle over [t0, t1] (default: the last ``baseline_s``): use it as idle_w.

        Returns the new baseline, or None (baseline unchanged) when the meter had no samples then.
        """
        t1 = time.monotonic() if t1 is None else t1
        t0 = t1 - self.baseline_s if t0 is None else t0
        with self._lock:
            part = integrate(self._samples, t0, t1, self.max_hold_s)
            if part.covered_s <= 0 or part.covered_s < self.min_coverage * (t1 - t0):
                return None
            self._idle_w = part.energy_j / part.covered_s
            self._idle_source = "marked"
            return self._idle_w

    idle = mark_idle_baseline  # the hint name used by callers: sampler.idle(t0, t1)

    def energy_between(self, t0: float, t1: float) -> float | None:
        """Joules over [t0, t1] (gaps filled with the covered mean), or None when too sparse."""
        with self._lock:
            part = integrate(self._samples, t0, t1, self.max_hold_s)
        if t1 <= t0 or part.covered_s < self.min_coverage * (t1 - t0) or part.covered_s <= 0:
            return None
        return part.energy_j / part.covered_s * (t1 - t0)

    def last_error(self, t0: float = float("-inf"), t1: float = float("inf")) -> str | None:
        with self._lock:
            for t, reason in reversed(self._errors):
                if t0 <= t <= t1:
                    return reason
        return None

    def _error_for(self, t0: float, t1: float) -> str | None:
        """The failure that explains a gap in [t0, t1]: the last error before t1 that happened in
        the window, or earlier with no sample since (the meter was still failing)."""
        with self._lock:
            for t_err, reason in reversed(self._errors):
                if t_err > t1:
                    continue
                if t_err >= t0 - self.max_hold_s:
                    return reason
                k = bisect.bisect_right([s.t for s in self._samples], t_err)
                recovered = k < len(self._samples) and self._samples[k].t <= t0
                return None if recovered else reason
        return None

    def window(self, t0: float, t1: float, inferences: int) -> EnergyWindow:
        """Energy over [t0, t1] in which ``inferences`` inferences ran."""
        duration = t1 - t0
        with self._lock:
            if inferences > 0:
                self._note_busy(t0)
            part = integrate(self._samples, t0, t1, self.max_hold_s)
            idle_w = self._idle_w
        coverage = part.covered_s / duration if duration > 0 else 0.0
        reason = self._missing_reason(t0, t1, duration, coverage)
        avg_w = energy = gross = None
        if reason is None:
            avg_w = part.energy_j / part.covered_s
            energy = avg_w * duration
            if inferences == 0 and duration >= self.auto_idle_min_s:
                with self._lock:
                    self._idle_w = idle_w = avg_w
                    self._idle_source = "idle window"
            if inferences > 0:
                gross = avg_w * duration / inferences * 1000.0
        net = net_energy(avg_w, idle_w, duration, inferences, self.min_net_w)
        return EnergyWindow(
            t0=t0,
            t1=t1,
            inferences=inferences,
            avg_w=avg_w,
            idle_w=idle_w,
            mj_per_inference=gross,
            mj_per_inference_net=net.mj_per_inference,
            energy_j=energy,
            source=self.source,
            measured=self.meter.measured,
            samples=part.samples,
            coverage=round(coverage, 4),
            missing_reason=reason,
            net_missing_reason=None if reason is None and inferences == 0 else net.missing_reason,
            basis=basis(gross, net.mj_per_inference),
        )

    def _note_busy(self, t0: float) -> None:
        """Inferences ran from ``t0`` on: a start-up baseline that overlaps is not idle."""
        if self._busy_from is None or t0 < self._busy_from:
            self._busy_from = t0
        span = self._start_span
        if self._idle_source == "start" and span is not None and t0 < span[1]:
            log.info(
                "idle baseline for %s discarded: inferences ran during it (%.3f W); idle_w "
                "waits for a window of >= %.1f s without inferences",
                self.source,
                self._idle_w or 0.0,
                self.auto_idle_min_s,
            )
            self._idle_w, self._idle_source = None, ""

    def _missing_reason(self, t0: float, t1: float, duration: float, coverage: float) -> str | None:
        if duration <= 0:
            return "empty window"
        if coverage >= self.min_coverage:
            return None
        error = self._error_for(t0, t1)
        if self._thread is None and not self._samples:
            base = "meter not started"
        elif error is not None:
            base = error
        else:
            base = "no samples from the meter in this window"
        return f"{base} (samples cover {coverage:.0%} of the window)"

    def status(self) -> dict[str, Any]:
        with self._lock:
            last = self._samples[-1] if self._samples else None
            errors = len(self._errors)
        return {
            "source": self.source,
            "measured": self.meter.measured,
            "running": self.is_alive(),
            "failing": self.failing,
            "last_error": self.last_error(),
            "errors": errors,
            "idle_w": self.idle_w,
            "idle_source": self._idle_source or None,
            "last_sample": last.to_dict() if last else None,
            "meter": self.meter.describe(),
        }


@contextmanager
def sampling(spec: str, **kwargs: Any) -> Iterator[EnergySampler]:
    """``with sampling("um25c:/dev/rfcomm0") as s: ...``: a started sampler, stopped on exit."""
    sampler = EnergySampler(spec, **kwargs).start()
    try:
        yield sampler
    finally:
        sampler.stop()
