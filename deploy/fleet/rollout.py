"""Staged rollouts over MQTT: a :class:`deploy.fleet.rollout_plan.RolloutPlan` driven by real
pushes.

:class:`Deployer` pushes one registry variant to one device (a fresh release counter from the
registry, the deployment recorded before and after). :class:`RolloutRunner` runs a plan: canary,
waves after successes, abort at the failure threshold or timeout; after an abort no device is
notified and each device already moved gets its previous variant back as a NEW signed manifest
with a higher release counter (the old bytes; anti-rollback stays intact).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.fleet.rollout_plan import RolloutPlan, RolloutPolicy, Step
from deploy.mqtt import BrokerAddress
from deploy.push import PushResult, build_manifest, push_model, release_above
from deploy.push_wave import WavePusher

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
        outcome = "committed" if result.ok else result.outcome
        if outcome not in ("committed", "rolled_back", "rejected"):
            outcome = "rejected"  # timeout or duplicate: the device did not take it
        why = result.message if not reason else f"{reason}: {result.message}"
        self.registry.finish_deployment(dep, outcome, why)
        log.info("%s on %s: %s (%s)", variant.recipe, device, outcome, result.message)
        return result

    def rollback(self, device: str, variant: Variant, *, why: str) -> PushResult:
        """Send ``device`` back to ``variant``: a NEW signed manifest of the older artifact
        with a release above the device's slot counter (anti-rollback holds through it). A
        device still holding those bytes (its last_good) installs them from its store: no
        chunk moves."""
        return self.push(device, variant, reason=f"rollback ({why})")

    def push_wave(
        self,
        devices: Sequence[str],
        variant: Variant,
        *,
        reason: str = "",
        on_result: Callable[[str, PushResult], None] | None = None,
    ) -> dict[str, PushResult]:
        """:meth:`push` to many devices at once: a manifest signed for each device, the
        chunks published once on the shared stream (deploy.push_wave)."""
        deps, manifests = {}, {}
        for device in devices:
            release = self.registry.next_release(self.model, at_least=self._release_floor(device))
            deps[device] = self.registry.record_deployment(
                device, variant.id, release, variant.sha256
            )
            manifests[device] = build_manifest(
                Path(variant.path), self.private_key, name=self.model, version=str(release),
                release=release, recipe=variant.recipe, targets={"devices": [device]},
            )  # fmt: skip

        def finished(device: str, result: PushResult) -> None:
            outcome = "committed" if result.ok else result.outcome
            if outcome not in ("committed", "rolled_back", "rejected"):
                outcome = "rejected"  # timeout or duplicate: the device did not take it
            why = result.message if not reason else f"{reason}: {result.message}"
            self.registry.finish_deployment(deps[device], outcome, why)
            if on_result is not None:
                on_result(device, result)

        try:
            with WavePusher(self.broker, prefix=self.prefix, on_result=finished) as pusher:
                wave = pusher.push(
                    Path(variant.path), manifests, timeout_s=self.timeout_s, gates=self.gates
                )
        except Exception as exc:
            for dep in deps.values():
                self.registry.finish_deployment(dep, "rejected", f"push failed: {exc}")
            raise
        log.info("wave of %d devices: %s", len(devices), wave.to_dict())
        return wave.results

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
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RolloutRunner:
    def __init__(
        self,
        deployer: Deployer,
        variant: Variant,
        previous: Mapping[str, Variant | None],
        *,
        class_id: str,
        policy: RolloutPolicy | None = None,
        workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployer = deployer
        self.registry = deployer.registry
        self.variant = variant
        self.previous = previous
        self.class_id = class_id
        self.policy = policy or RolloutPolicy()
        self.workers = workers
        self.clock = clock

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
        done: queue.Queue[tuple[str, str, str]] = queue.Queue()
        pending: set[str] = set()
        with ThreadPoolExecutor(self.workers) as pool:

            def notify(step: Step) -> None:
                for device in step.notify:
                    pending.add(device)
                    self.registry.set_rollout_device(rid, device, wave=step.wave, state="notified")
                if step.notify:  # one push for the wave: the chunks go out once, shared
                    pool.submit(self._push_wave, list(step.notify), done)
                for device in step.rollback:
                    if device not in pending:  # still installing: its result returns it again
                        self._roll_back(rid, device, out, step.reason)
                self.registry.update_rollout(
                    rid, state=plan.state, counts=plan.counts(), plan=plan.to_dict()
                )

            notify(plan.start(self.clock()))
            while pending or plan.state not in ("done", "aborted"):
                try:
                    device, outcome, reason = done.get(timeout=1.0)
                except queue.Empty:
                    notify(plan.tick(self.clock()))
                    if not pending and plan.state in ("done", "aborted"):
                        break
                    continue
                pending.discard(device)
                self.registry.set_rollout_device(rid, device, wave=0, state=outcome, reason=reason)
                if outcome == "committed":
                    out.committed.append(device)
                else:
                    out.failed[device] = reason
                notify(plan.record(device, outcome, self.clock(), reason))
        out.state = plan.state
        out.reason = plan.to_dict().get("reason") or ""
        self.registry.update_rollout(
            rid, state=plan.state, counts=plan.counts(), plan=plan.to_dict()
        )
        return out

    def _push_wave(self, devices: list[str], done: queue.Queue[tuple[str, str, str]]) -> None:
        reported: set[str] = set()

        def report(device: str, r: PushResult) -> None:
            reported.add(device)
            done.put((device, "committed" if r.ok else r.outcome, r.message))

        try:
            self.deployer.push_wave(devices, self.variant, reason="rollout", on_result=report)
        except Exception as exc:
            for device in devices:
                if device not in reported:
                    done.put((device, "failed", str(exc)))

    def _roll_back(self, rid: int, device: str, out: RolloutOutcome, why: str) -> None:
        prev = self.previous.get(device)
        if prev is None:
            out.rolled_back[device] = "no previous variant to return to"
            return
        r = self.deployer.rollback(device, prev, why=f"rollout aborted: {why}")
        state = "rolled_back" if r.ok else "rollback_failed"
        out.rolled_back[device] = r.outcome
        self.registry.set_rollout_device(rid, device, wave=0, state=state, reason=why)
