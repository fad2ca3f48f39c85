"""The closed loop as a host service: run it once (`edge-deploy optimize`) or keep it running
(`edge-deploy optimize --service`).

The service keeps one small watch per hardware class after the loop finished on it (state,
chosen variant, devices, start of the current telemetry window) and every poll decides which
classes need the loop again (:meth:`LoopService.evaluate`):

* a hardware class with online devices that the service has not run yet (a new class, or every
  class at start);
* a class with an online device that was not there when the loop last ran on it (the loop then
  promotes the class's variant to it, or starts over when the new device is the canary);
* a converged class whose chosen variant's telemetry, over a tumbling window that is judged
  with the same "enough telemetry" rule as the loop's, misses a device target again.

An infeasible class is re-run only when its devices change. The loop itself keeps all state in
the registry, so a restarted service re-runs every class once and picks up from the registry.

Only one service drives a model: a cycle runs only under the registry lease ``loop/<model>``
(deploy/fleet/lease.py), held for as long as :meth:`LoopService.serve` runs (a one-shot
:meth:`LoopService.run_cycle` gives it back at the end). Another host's service on the same
registry waits, and takes over when the holder stops or dies; a holder that loses the lease
winds its loop down like a stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import EdgeloopError
from agent.wire.record import Record
from deploy.fleet.collector import Collector
from deploy.fleet.lease import DEFAULT_TTL_S, Lease
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.fleet.rollout import Deployer
from deploy.loop.driver import ClassRun, ClosedLoop, LoopSettings
from deploy.loop.generate import Generator
from deploy.loop.optimizer import Decision, enough_telemetry
from deploy.loop.targets import Targets

log = logging.getLogger(__name__)

STOPPED_NOTE = "stopped by the operator"
LEASE_LOST_NOTE = "stopped: the model's lease was lost to another host"


def class_matches(class_id: str, wanted: Iterable[str]) -> bool:
    """True when ``class_id`` ("rpi4b-cpu/ai-edge-litert") is named in ``wanted`` by its full id
    or its hardware class ("rpi4b-cpu"). An empty ``wanted`` matches every class."""
    names = list(wanted)
    return not names or any(class_id == w or class_id.partition("/")[0] == w for w in names)


def online_classes(registry: Registry, wanted: Iterable[str] = ()) -> dict[str, list[str]]:
    """Online devices per registry class id (sorted), restricted to ``wanted``."""
    names = list(wanted)
    out: dict[str, list[str]] = {}
    for d in registry.devices():
        if d.online and d.hardware_class and class_matches(d.hardware_class, names):
            out.setdefault(d.hardware_class, []).append(d.id)
    return {k: sorted(v) for k, v in sorted(out.items())}


def current_variant(registry: Registry, device_id: str) -> Variant | None:
    """The registry variant a device serves now (by the sha256 in its retained state)."""
    d = registry.device(device_id)
    sha = d.status.sha256 if d else None
    return registry.variant_by_sha(sha) if sha else None


def wait_for_devices(
    registry: Registry,
    collector: Collector,
    wanted: Sequence[str],
    timeout_s: float,
    *,
    poll_s: float = 0.2,
) -> dict[str, list[str]]:
    """Wait until an online device of every ``wanted`` class (or of any class when none is
    named) is in the registry; returns what is online at the deadline at the latest."""
    deadline = time.monotonic() + timeout_s
    while True:
        collector.drain(2.0)
        found = online_classes(registry, wanted)
        have = all(any(class_matches(c, [w]) for c in found) for w in wanted)
        if (found and have) or time.monotonic() >= deadline:
            return found
        time.sleep(poll_s)


class StoppableLoop(ClosedLoop):
    """A :class:`ClosedLoop` that winds down when ``stop`` is set: a push in flight finishes
    (bounded by the deployer's timeout), then the class ends with note :data:`STOPPED_NOTE`."""

    def __init__(
        self, *args: Any, stop: threading.Event, lease: Lease | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stop = stop
        self.lease = lease

    def _step(self, run: ClassRun, since: float) -> None:
        lost = self.lease is not None and not self.lease.held
        if (self.stop.is_set() or lost) and run.state not in ("done", "infeasible"):
            if run.pending is not None and not run.pending.done():
                return
            run.note = f"{LEASE_LOST_NOTE if lost else STOPPED_NOTE} (was {run.state})"
            run.state = "infeasible"  # ClosedLoop.run ends on done/infeasible
            return
        super()._step(run, since)


@dataclass
class ClassWatch:
    """What the service remembers of a class after the loop ran on it."""

    class_id: str
    state: str  # done | infeasible
    variant: str | None  # the chosen variant (done) or the canary's last one
    devices: frozenset[str]
    window_start: float  # telemetry of the chosen variant since then is judged next

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"devices": sorted(self.devices)}


@dataclass(frozen=True)
class Trigger(Record):
    class_id: str
    reason: str


@dataclass
class LoopService:
    """Runs the closed loop for the classes that need it, once (:meth:`run_cycle`) or until
    ``stop`` is set (:meth:`serve`)."""

    registry: Registry
    deployer: Deployer
    targets: Targets
    settings: LoopSettings = field(default_factory=LoopSettings)
    classes: tuple[str, ...] = ()  # only these (full ids or hardware classes); empty = all
    poll_s: float = 30.0
    on_decision: Callable[[str, Decision], None] | None = None
    on_trigger: Callable[[Trigger], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.time
    watches: dict[str, ClassWatch] = field(default_factory=dict)
    cycles: int = 0
    lease_ttl_s: float = DEFAULT_TTL_S
    lease: Lease | None = None  # made at the first cycle: "loop/<model>"
    serving: bool = False
    generator: Generator | None = None  # new candidates on demand (deploy.loop.generate)

    def evaluate(self) -> list[Trigger]:
        """The classes that need the loop now, with why. Advances the telemetry window of a
        converged class whose window was judged and met every device target."""
        out = []
        now = self.clock()
        for cid, devices in online_classes(self.registry, self.classes).items():
            w = self.watches.get(cid)
            if w is None:
                out.append(Trigger(cid, "hardware class not optimized yet"))
                continue
            new = sorted(set(devices) - w.devices)
            if new:
                out.append(Trigger(cid, f"new device(s) online: {', '.join(new)}"))
                continue
            w.devices = frozenset(devices)  # devices that left are forgotten
            if w.state != "done" or w.variant is None:
                continue
            stats = self.registry.class_stats(cid, w.variant, w.window_start)
            enough, _why = enough_telemetry(stats, self.settings.rule)
            if not enough:
                continue
            missed = self.targets.for_class(cid).check(stats.metrics())
            if missed:
                v = self.registry.variant(w.variant)
                what = "; ".join(m.describe() for m in missed)
                recipe = v.recipe if v else w.variant
                out.append(Trigger(cid, f"{recipe} misses targets again ({what})"))
            else:
                w.window_start = now
        return out

    def run_cycle(self, triggers: Sequence[Trigger]) -> list[ClassRun]:
        """Run the loop on the triggered classes (in parallel, one ClosedLoop) and remember
        how each ended."""
        if not triggers:
            return []
        if self.lease is None:
            self.lease = Lease(self.registry, f"loop/{self.deployer.model}", ttl_s=self.lease_ttl_s)
        if not self.lease.acquire():
            log.info(
                "not running the loop of %s: %s drives it", self.deployer.model, self.lease.holder()
            )
            return []
        try:
            return self._run_cycle(triggers, self.lease)
        finally:
            if not self.serving:
                self.lease.release()

    def _run_cycle(self, triggers: Sequence[Trigger], lease: Lease) -> list[ClassRun]:
        for t in triggers:
            log.info("re-running the loop on %s: %s", t.class_id, t.reason)
            if self.on_trigger:
                self.on_trigger(t)
        settings = LoopSettings(
            poll_s=self.settings.poll_s,
            max_trials=self.settings.max_trials,
            timeout_s=self.settings.timeout_s,
            rule=self.settings.rule,
            policy=self.settings.policy,
            since=self.clock(),
        )
        loop = StoppableLoop(
            self.registry,
            self.deployer,
            self.targets,
            settings,
            on_decision=self.on_decision,
            stop=self.stop,
            lease=lease,
            generator=self.generator,
        )
        runs = loop.run(only=[t.class_id for t in triggers])
        self.cycles += 1
        end = self.clock()
        for r in runs:
            if r.note.startswith((STOPPED_NOTE, LEASE_LOST_NOTE)):
                continue  # not finished: the next start runs it again
            self.watches[r.class_id] = ClassWatch(
                r.class_id, r.state, r.final_variant or r.current, frozenset(r.devices), end
            )
        return runs

    def serve(self, on_runs: Callable[[list[ClassRun]], None] | None = None) -> None:
        """Evaluate and run every ``poll_s`` seconds until :attr:`stop` is set (holding the
        model's lease from the first cycle that gets it to the end)."""
        self.serving = True
        try:
            while not self.stop.is_set():
                try:
                    runs = self.run_cycle(self.evaluate())
                except EdgeloopError as exc:
                    log.warning("loop cycle failed: %s", exc)
                    runs = []
                if runs and on_runs:
                    on_runs(runs)
                self.stop.wait(self.poll_s)
        finally:
            self.serving = False
            if self.lease is not None:
                self.lease.release()
