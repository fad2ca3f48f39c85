"""The install state machine: accept -> transfer -> verify -> probe -> trial -> commit | rollback.

Owned and driven by the agent's core thread (agent.service): every method here runs there, so
nothing is locked. Slow work (the sandboxed probe) runs on a worker thread through
``host.background`` and comes back as a call on the core thread.

Order of the acceptance checks (nothing is written before all pass): signature, schema, expiry
(agent.wire.manifest_signing.verify_manifest), target (this device or its class), slot and its
release counter (agent.delivery.counters, through the store), compatibility with this board
(accelerator, operator versions the installed runtime resolves: agent.delivery.checks), free
disk and limits (ModelStore.begin). Every rejection is an event with a reason code; the state is
unchanged.

:class:`Installer` is the acceptance, the clock (``tick``) and the rollback command; its parts
are the transfer (agent.delivery.transfer), the verify/probe/trial/commit steps
(agent.delivery.trial) and what they share (agent.delivery.install_base: the running install's
record, the core thread's protocols, the failure path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from agent.delivery.checks import Gates, operator_problems
from agent.delivery.install_base import CoreHost, Install, InstallHost, Outputs, _ref
from agent.delivery.store import ModelStore
from agent.delivery.transfer import DEFAULT_WINDOW_BYTES, MAX_BAD_CHUNK, Transfer
from agent.delivery.trial import Trial
from agent.errors import ManifestError, StoreError
from agent.wire.manifest import Manifest
from agent.wire.manifest_signing import verify_manifest
from agent.wire.messages import Command, EventKind, ReplyStatus, ReplyTo
from agent.wire.reasons import Reason

__all__ = [
    "DEFAULT_WINDOW_BYTES",
    "MAX_BAD_CHUNK",
    "CoreHost",
    "Gates",
    "Install",
    "InstallHost",
    "Installer",
    "Outputs",
    "operator_problems",
]

log = logging.getLogger(__name__)


class Installer(Transfer, Trial):
    """One install at a time; a second deploy while one runs is refused with ``busy``."""

    def __init__(
        self,
        host: InstallHost,
        out: Outputs,
        *,
        store: ModelStore,
        trust_keys: Mapping[str, Any],
        runtime: tuple[str, str],
        has_edgetpu: bool,
        identity: tuple[str, str | None],
        require_targets: bool = False,
        default_gates: Gates,
        default_delegate: str,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        chunk_timeout_s: float = 3.0,
        probe_timeout_s: float = 60.0,
        probe_memory_mb: int = 2048,
        reconnect_grace_s: float = 0.5,
    ) -> None:
        self.host = host
        self.out = out
        self.store = store
        self.trust_keys = trust_keys
        self.runtime_name, self.runtime_version = runtime
        self.has_edgetpu = has_edgetpu
        self.identity = identity  # (device id, hardware class): whom a manifest must name
        self.require_targets = require_targets  # an untargeted manifest is refused too
        self.default_gates = default_gates
        self.default_delegate = default_delegate
        self.window_bytes = window_bytes
        self.chunk_timeout_s = chunk_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.probe_memory_mb = probe_memory_mb
        self.reconnect_grace_s = reconnect_grace_s
        self.active: Install | None = None
        self.stale_chunks = 0

    # ---- state for the birth message -------------------------------------------------------
    def state(self) -> dict[str, Any]:
        a = self.active
        if a is None:
            return {"state": "idle"}
        out: dict[str, Any] = {"state": a.phase, **a.summary()}
        if a.phase == "downloading":
            out["received_bytes"] = a.received_bytes
            out["size"] = a.manifest.size
        return out

    # ---- accept ----------------------------------------------------------------------------
    def on_deploy(self, cmd: Command, reply: ReplyTo | None) -> None:
        store = self.store
        try:
            manifest = verify_manifest(
                cmd.args.get("manifest", {}), self.trust_keys, now=store.trusted_now()
            )
        except ManifestError as exc:
            self._reject(reply, exc.code, exc.message, None)
            return
        a = self.active
        if a is not None:
            if a.manifest.sha256 == manifest.sha256 and a.manifest.release == manifest.release:
                self.out.reply(reply, ReplyStatus.DUPLICATE, Reason.REPLAYED, "already installing")
                if a.phase == "downloading":  # a re-sent deploy also nudges the transfer
                    self._request_more(a, force=True)
            else:
                self._reject(reply, Reason.BUSY, f"installing {a.manifest.name} now", manifest)
            return
        device_id, hardware_class = self.identity
        if manifest.targets is None and self.require_targets:
            msg = "names no device or class (targets); this device requires one (require_targets)"
            self._reject(reply, Reason.WRONG_TARGET, msg, manifest)
            return
        if not manifest.addressed_to(device_id, hardware_class):
            msg = f"addressed to {manifest.targets}, not to {device_id} ({hardware_class})"
            self._reject(reply, Reason.WRONG_TARGET, msg, manifest)
            return
        try:
            verdict = store.check_release(manifest)
        except ManifestError as exc:
            self._reject(reply, exc.code, exc.message, manifest)
            return
        staged = {m.sha256 for m in store.staged()}
        if verdict == "replayed" and manifest.sha256 not in staged:
            cur = store.current()
            msg = "already installed" if cur and cur.sha256 == manifest.sha256 else "replayed"
            self.out.reply(reply, ReplyStatus.DUPLICATE, Reason.REPLAYED, msg, **_ref(manifest))
            return
        delegate = str(manifest.variant.delegate or "auto")
        override = cmd.args.get("delegate")
        if override:
            # Command args are not signed: they may pick among built-in delegates, never name
            # a library to load (external delegates come only from a signed manifest or the
            # local config).
            if not isinstance(override, str) or not (
                override in ("auto", "cpu", "edgetpu") or override.startswith("edgetpu:")
            ):
                self._reject(
                    reply,
                    Reason.INVALID,
                    f"delegate {override!r:.80} is not allowed in a command "
                    "(use auto, cpu or edgetpu[:device]; external delegates only via the "
                    "signed manifest or the agent config)",
                    manifest,
                )
                return
            delegate = override
        if delegate == "auto" and not override:
            delegate = self.default_delegate  # the board's own policy (config runtime.delegate)
        problems = self._compat_problems(manifest, delegate)
        if problems:
            self._reject(reply, Reason.INCOMPATIBLE, "; ".join(problems), manifest)
            return
        try:
            store.begin(manifest)
        except (ManifestError, StoreError) as exc:
            self._reject(reply, exc.code, exc.message, manifest)
            return
        store.record_release(manifest)
        gates = Gates.merge(self.default_gates, cmd.args.get("gates") or {})
        self.active = Install(manifest, reply, gates, delegate)
        if cmd.args.get("stream") is True:  # unsigned and harmless: every chunk is checked
            self.join_stream(self.active)
        self.out.reply(reply, ReplyStatus.ACCEPTED, None, "accepted", **_ref(manifest))
        self.out.event(EventKind.INSTALL_ACCEPTED, cmd_id=cmd.id, **_ref(manifest))
        self._continue()  # the first requests go out before the state is republished
        self.host.state_changed()

    def _compat_problems(self, manifest: Manifest, delegate: str) -> list[str]:
        req = manifest.requirements
        problems = []
        if (req.accelerator == "edgetpu" or manifest.variant.delegate == "edgetpu") and not (
            self.has_edgetpu
        ):
            problems.append("the model needs an Edge TPU and this board has none")
        problems += operator_problems(manifest, self.runtime_name, self.runtime_version, delegate)
        return problems

    def _reject(self, reply: ReplyTo | None, code: str, message: str, m: Manifest | None) -> None:
        log.warning("deploy rejected (%s): %s", code, message)
        ref = _ref(m) if m else {}
        self.out.reply(reply, ReplyStatus.REJECTED, code, message, **ref)
        self.out.event(
            EventKind.REJECTED, code, message, cmd_id=reply.cmd_id if reply else None, **ref
        )

    def tick(self) -> None:
        a = self.active
        if a is None:
            return
        now = time.monotonic()
        if a.phase == "downloading" and a.reconnected is not None:
            if now - a.reconnected > self.reconnect_grace_s:
                lost = sorted(i for i, t in a.inflight.items() if t < a.reconnected)
                a.reconnected = None
                if lost:
                    log.info("asking again for %d chunks lost with the connection", len(lost))
                    a.inflight.update((i, now) for i in lost)
                    self.out.request_chunks(a.manifest.sha256, lost)
        elif (
            a.phase == "downloading"
            and (a.inflight or a.stream is not None)
            and now - a.last_rx > self.chunk_timeout_s
        ):
            log.info("no chunk for %.1fs: asking again for the missing ones", now - a.last_rx)
            a.last_rx = now
            self._request_more(a, force=True)
        elif a.phase == "trial":
            self._check_trial(a, now)

    def abort_for_rollback(self) -> bool:
        """The rollback command arrived: drop whatever install is running. True if one was."""
        a = self.active
        if a is None:
            return False
        if a.phase == "trial":
            self._rollback_trial(a, "rollback command")
        else:
            self._leave_stream(a)
            self.store.abort(a.manifest.sha256)
            self.active = None
            self.out.event(
                EventKind.ROLLED_BACK, "rollback_command", "install abandoned", **_ref(a.manifest)
            )
            self.host.state_changed()
        return True
