"""Send one device back to the model it ran before (``edge-deploy rollback``).

A rollback is a NEW signed manifest of the older artifact with a release above the device's
slot counter, so anti-rollback holds through it (docs/protocol.md, "Going back"):

1. ask the device its state (``cmd/state``, read-only): the slot it serves, the slot's counter
   (``slot_release``) and ``last_good``, the model before the current one, still in its store;
2. find those bytes on the host (``--model FILE``, or the registry variant with that sha256)
   and check their sha256: the host signs only bytes it hashed itself, never what a device
   reports;
3. sign them for that device and slot with release ``slot_release + 1`` and push: a device
   still holding the bytes installs them from its store (no chunk moves); otherwise it pulls
   them like any push. The install goes through the probe and the trial gates as usual.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import EdgeloopError
from agent.wire.manifest import DEFAULT_SLOT, SignedManifest
from agent.wire.messages import State
from agent.wire.status import ModelRef
from deploy.command import build_command, send_command
from deploy.mqtt import BrokerAddress
from deploy.push import Pusher, PushResult, build_manifest, release_above

if TYPE_CHECKING:
    from deploy.fleet.registry import Registry


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback will sign: the older model and where its bytes are on the host."""

    device_id: str
    target: ModelRef
    model: Path
    release: int
    slot: str

    def sign(self, private_key: Any) -> SignedManifest:
        variant = self.target.variant
        return build_manifest(
            self.model,
            private_key,
            name=self.target.name,
            version=self.target.version,
            release=self.release,
            recipe=str(variant.get("recipe") or "unknown"),
            delegate=str(variant.get("delegate") or "auto"),
            targets={"devices": [self.device_id]},
            slot=self.slot,
        )


def device_state(
    broker: BrokerAddress, device_id: str, *, prefix: str = "edgeloop", timeout_s: float = 30.0
) -> State:
    """The device's state, asked over ``cmd/state`` (unsigned: read-only)."""
    cmd = build_command("state", device_id, {}, None)
    reply = send_command(broker, device_id, cmd, prefix=prefix, timeout_s=timeout_s)
    state = reply.data.get("state")
    if reply.status != "ok" or not isinstance(state, dict):
        raise EdgeloopError(f"{device_id} did not report its state: {reply.message}")
    return State.from_dict(state)


def plan_rollback(
    state: State,
    device_id: str,
    *,
    model: Path | None = None,
    registry: Registry | None = None,
) -> RollbackPlan:
    """Choose the older model (the device's ``last_good``) and its bytes on the host."""
    target = state.last_good
    if target is None:
        raise EdgeloopError(
            f"{device_id} reports no previous model to go back to",
            hint="push the model you want it to run with edge-deploy push (a higher release)",
        )
    path = model
    if path is None and registry is not None:
        variant = registry.variant_by_sha(target.sha256)
        path = Path(variant.path) if variant is not None else None
    if path is None:
        raise EdgeloopError(
            f"the bytes of {target.name} {target.version} ({target.sha256[:12]}) are not on "
            "this host",
            hint="pass --model FILE (that model's .tflite) or --registry DB holding it",
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != target.sha256:
        raise EdgeloopError(
            f"{path} has sha256 {digest[:12]}, not {target.sha256[:12]}: the model "
            f"{device_id} ran before",
            hint="pass the file of the previous model",
        )
    slot = state.slot or DEFAULT_SLOT
    return RollbackPlan(device_id, target, path, release_above(state), slot)


def roll_back(
    broker: BrokerAddress,
    device_id: str,
    private_key: Any,
    *,
    model: Path | None = None,
    registry: Registry | None = None,
    prefix: str = "edgeloop",
    gates: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
) -> PushResult:
    """Ask the device's state, sign its last_good anew above its counter, push it."""
    state = device_state(broker, device_id, prefix=prefix)
    plan = plan_rollback(state, device_id, model=model, registry=registry)
    signed = plan.sign(private_key)
    with Pusher(broker, device_id, prefix=prefix, progress=None, key=private_key) as pusher:
        return pusher.push(plan.model, signed, timeout_s=timeout_s, gates=gates)
