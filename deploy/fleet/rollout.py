"""Staged rollouts over MQTT: a :class:`deploy.fleet.rollout_plan.RolloutPlan` driven by real
pushes.

:class:`Deployer` pushes one registry variant to one device (a fresh release counter from the
registry, the deployment recorded before and after), or prepares the pushes of a whole wave
(:meth:`Deployer.prepare`: one release, one signed manifest per device, the deployments recorded
in one transaction). :class:`RolloutRunner` runs a plan through one
:class:`~deploy.fleet.fleet_push.FleetPusher` (one MQTT connection, many pushes in flight):
canary, waves after successes, abort at the failure threshold or timeout; after an abort pushes
not yet announced are withdrawn (no device is notified after the abort) and each device already
moved gets its previous variant back as a NEW signed manifest with a higher release counter
(the old bytes; anti-rollback stays intact), also as one batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.wire.manifest_signing import sign_manifest
from deploy.fleet.fleet_push import FleetPusher, PushJob
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.fleet.rollout_plan import RolloutPlan, RolloutPolicy, Step
from deploy.fleet.rollout_progress import Progress, snapshot
from deploy.mqtt import BrokerAddress
from deploy.push import PushResult, build_manifest, push_model, release_above

log = logging.getLogger(__name__)


@dataclass
class Deployer:
    registry: Registry
    broker: BrokerAddress
    private_key: Any
    model: str
    prefix: str = "edgeloop"
    gates: Mapping[str, Any] | None = None
    timeout_s: float = 300.0
    _pending: dict[str, tuple[int, Variant, str]] = field(default_factory=dict, repr=False)

    def push(self, device: str, variant: Variant, *, reason: str = "") -> PushResult:
        release = self.registry.next_release(self.model, at_least=self._release_floor(device))
        dep = self.registry.record_deployment(device, variant.id, release, variant.sha256)
        try:
            result = push_model(
                Path(variant.path),
                device,
                self.broker,
                self.private_key,
                name=self.model,
                version=str(release),
                release=release,
                prefix=self.prefix,
                recipe=variant.recipe,
                gates=self.gates,
                timeout_s=self.timeout_s,
                progress=None,
            )
        except Exception as exc:
            self.registry.finish_deployment(dep, "rejected", f"push failed: {exc}")
            raise
        self._finish(dep, device, variant, result, reason)
        return result

    def rollback(self, device: str, variant: Variant, *, why: str) -> PushResult:
        """Send ``device`` back to ``variant``: a NEW signed manifest of the older artifact
        with a release above the device's slot counter (anti-rollback holds through it). A
        device still holding those bytes (its last_good) installs them from its store: no
        chunk moves. Rollout waves roll back in batches through :meth:`prepare`."""
        return self.push(device, variant, reason=f"rollback ({why})")

    def prepare(
        self, devices: Sequence[str], variant: Variant, *, reason: str = ""
    ) -> list[PushJob]:
        """The pushes of a batch: one release above every device's, the model inspected once,
        one signed manifest per device (addressed to it), the deployments recorded in one
        transaction. Hand the jobs to a FleetPusher, then each verdict to :meth:`finish`."""
        if not devices:
            return []
        floor = max(self._release_floor(d) for d in devices)
        release = self.registry.next_release(self.model, at_least=floor)
        model = Path(variant.path)
        base = build_manifest(
            model,
            self.private_key,
            name=self.model,
            version=str(release),
            release=release,
            recipe=variant.recipe,
        ).manifest.to_dict()
        jobs = []
        with self.registry.transaction():
            for device in devices:
                if device in self._pending:
                    raise ValueError(f"{device}: a push is already under way")
                signed = sign_manifest(base | {"targets": {"devices": [device]}}, self.private_key)
                dep = self.registry.record_deployment(device, variant.id, release, variant.sha256)
                self._pending[device] = (dep, variant, reason)
                jobs.append(PushJob(device, signed, model))
        return jobs

    def finish(self, device: str, result: PushResult | None, why: str = "") -> None:
        """Record the verdict of a prepared push (None: withdrawn before it was sent)."""
        dep, variant, reason = self._pending.pop(device)
        if result is None:
            self.registry.finish_deployment(dep, "rejected", why or "withdrawn before it was sent")
            return
        self._finish(dep, device, variant, result, reason)

    def _finish(
        self, dep: int, device: str, variant: Variant, result: PushResult, reason: str
    ) -> None:
        outcome = "committed" if result.ok else result.outcome
        if outcome not in ("committed", "rolled_back", "rejected"):
            outcome = "rejected"  # timeout or duplicate: the device did not take it
        why = result.message if not reason else f"{reason}: {result.message}"
        self.registry.finish_deployment(dep, outcome, why)
        log.info("%s on %s: %s (%s)", variant.recipe, device, outcome, result.message)

    def _release_floor(self, device: str) -> int:
        """Above the device's slot counter and the release it serves, under any model name:
        it accepts only higher ones, and those may not come from this registry (``edge-deploy
        push`` signs with the time in ms; a registry restored from a backup is behind)."""
        d = self.registry.device(device)
        return release_above(d.status if d else None)


@dataclass
class RolloutOutcome:
    rollout_id: int
    state: str  # done | aborted
    committed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rolled_back: dict[str, str] = field(default_factory=dict)
    withdrawn: list[str] = field(default_factory=list)  # queued at the abort: never notified
    reason: str = ""
    seconds: float = 0.0  # from the canary's notification to the end
    aborted_at: float | None = None  # time.time() of the abort

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RolloutRunner:
    """Run one plan: ``RolloutRunner(deployer, variant, previous, class_id=...).run(devices)``.

    ``on_progress`` gets a :class:`~deploy.fleet.rollout_progress.Progress` at most every
    ``progress_s`` and at every change of wave or state; ``max_in_flight`` bounds the pushes
    announced and not yet answered (the rest of a wave waits in the queue)."""

    def __init__(
        self,
        deployer: Deployer,
        variant: Variant,
        previous: Mapping[str, Variant | None],
        *,
        class_id: str,
        policy: RolloutPolicy | None = None,
        max_in_flight: int = 500,
        on_progress: Callable[[Progress], None] | None = None,
        progress_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployer = deployer
        self.registry = deployer.registry
        self.variant = variant
        self.previous = previous
        self.class_id = class_id
        self.policy = policy or RolloutPolicy()
        self.max_in_flight = max_in_flight
        self.on_progress = on_progress
        self.progress_s = progress_s
        self.clock = clock
        self._rollbacks: dict[str, str] = {}  # device -> "pending" | outcome
        self._owed: set[str] = set()  # in flight at the abort: rolled back if they commit
        self._awaiting: set[str] = set()  # rollout pushes submitted, verdict not yet handled
        self._t0 = 0.0
        self.sent: list[tuple[str, str, float]] = []  # (device, sha256, time) of each command

    pusher: Callable[..., FleetPusher] = FleetPusher  # the transport of every push (a seam)

    def run(self, devices: Sequence[str]) -> RolloutOutcome:
        plan = RolloutPlan(list(devices), self.policy)
        rid = self.registry.create_rollout(
            self.deployer.model,
            self.variant.id,
            class_id=self.class_id,
            state="running",
            waves=list(self.policy.waves),
            counts=plan.counts(),
            plan=plan.to_dict(),
        )
        out = RolloutOutcome(rid, "running")
        t0 = self._t0 = self.clock()
        fp = self.pusher(
            self.deployer.broker,
            prefix=self.deployer.prefix,
            gates=self.deployer.gates,
            key=self.deployer.private_key,
            timeout_s=self.deployer.timeout_s,
            max_in_flight=self.max_in_flight,
        )
        with fp:
            self._apply(plan.start(t0), plan, fp, rid, out)
            shown = (0.0, "")
            while fp.busy or plan.state not in ("done", "aborted"):
                results = fp.poll(0.2)
                with self.registry.transaction():
                    for device, result in results:
                        self._on_result(device, result, plan, fp, rid, out)
                if not results:
                    self._apply(plan.tick(self.clock()), plan, fp, rid, out)
                shown = self._show(plan, fp, out, shown)
            self.sent = list(fp.sent)
        out.state = plan.state
        out.reason = plan.abort_reason or ""
        out.seconds = round(self.clock() - t0, 3)
        self.registry.update_rollout(
            rid, state=plan.state, counts=plan.counts(), plan=plan.to_dict()
        )
        self._show(plan, fp, out, (0.0, ""), force=True)
        return out

    # ---- steps and verdicts ----------------------------------------------------------------------
    def _apply(
        self, step: Step, plan: RolloutPlan, fp: FleetPusher, rid: int, out: RolloutOutcome
    ) -> None:
        if step.notify:
            jobs = self.deployer.prepare(step.notify, self.variant, reason="rollout")
            with self.registry.transaction():
                for d in step.notify:
                    self.registry.set_rollout_device(rid, d, wave=step.wave, state="notified")
            fp.submit(jobs)
            self._awaiting.update(step.notify)
        if step.state == "aborted" and out.aborted_at is None:
            out.aborted_at = time.time()
            self._withdraw(fp, rid, out)
        if step.rollback:
            now = [d for d in step.rollback if d not in out.withdrawn]
            # a device whose verdict is not handled yet is rolled back once it is (if it commits)
            self._owed |= {d for d in now if d in self._awaiting}
            self._roll_back([d for d in now if d not in self._awaiting], fp, rid, out, step.reason)
        if step.notify or step.rollback or step.state in ("done", "aborted"):
            self.registry.update_rollout(
                rid, state=plan.state, counts=plan.counts(), plan=plan.to_dict()
            )

    def _withdraw(self, fp: FleetPusher, rid: int, out: RolloutOutcome) -> None:
        """The abort: pushes still queued are never announced."""
        with self.registry.transaction():
            for job in fp.cancel():
                out.withdrawn.append(job.device)
                self._awaiting.discard(job.device)
                self.deployer.finish(job.device, None, "rollout aborted before it was sent")
                self.registry.set_rollout_device(
                    rid, job.device, wave=0, state="withdrawn", reason="rollout aborted"
                )

    def _on_result(
        self,
        device: str,
        r: PushResult,
        plan: RolloutPlan,
        fp: FleetPusher,
        rid: int,
        out: RolloutOutcome,
    ) -> None:
        self.deployer.finish(device, r)
        if device not in self._awaiting:  # the verdict of a roll-back push
            self._rollbacks[device] = r.outcome
            out.rolled_back[device] = r.outcome
            state = "rolled_back" if r.ok else "rollback_failed"
            self.registry.set_rollout_device(rid, device, wave=0, state=state, reason=r.message)
            return
        self._awaiting.discard(device)
        outcome = "committed" if r.ok else r.outcome
        if outcome not in ("committed", "rolled_back", "rejected", "timeout"):
            outcome = "failed"  # e.g. a duplicate that is not the installed model
        self.registry.set_rollout_device(rid, device, wave=0, state=outcome, reason=r.message)
        if outcome == "committed":
            out.committed.append(device)
        else:
            out.failed[device] = r.message
        step = plan.record(device, outcome, self.clock(), r.message)
        if device in self._owed:
            self._owed.discard(device)
            if outcome in ("committed", "timeout"):  # a silent device may have committed
                step = Step(
                    step.notify, (*step.rollback, device), step.state, step.wave, step.reason
                )
        self._apply(step, plan, fp, rid, out)

    def _roll_back(
        self, devices: list[str], fp: FleetPusher, rid: int, out: RolloutOutcome, why: str
    ) -> None:
        """Each device back to the variant it served before, one batch per variant."""
        groups: dict[str, tuple[Variant, list[str]]] = {}
        for device in devices:
            prev = self.previous.get(device)
            if prev is None:
                out.rolled_back[device] = "no previous variant to return to"
                continue
            groups.setdefault(prev.id, (prev, []))[1].append(device)
        for prev, group in groups.values():
            fp.submit(self.deployer.prepare(group, prev, reason=f"rollout aborted ({why})"))
            for device in group:
                self._rollbacks[device] = "pending"

    # ---- progress --------------------------------------------------------------------------------
    def _show(
        self,
        plan: RolloutPlan,
        fp: FleetPusher,
        out: RolloutOutcome,
        last: tuple[float, str],
        *,
        force: bool = False,
    ) -> tuple[float, str]:
        if self.on_progress is None:
            return last
        now = self.clock()
        key = f"{plan.state}:{plan.wave}"
        if not force and key == last[1] and now - last[0] < self.progress_s:
            return last
        queued = {j.device for j in fp.queued if j.device in self._awaiting}
        self.on_progress(snapshot(plan, queued, out.withdrawn, self._rollbacks, now - self._t0))
        return now, key
