"""The command verbs (host -> device on ``{p}/dev/{id}/cmd/{verb}``): parse, de-duplicate, act.

Runs on the agent's core thread (agent.service), like the installer it hands ``deploy`` to. What
a verb needs from the core is the small :class:`CommandHost` protocol; the rest (the store, the
installer, the load generator, the energy meter for ``bench``) is handed in at construction.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.delivery.cmdguard import CommandGuard
from agent.delivery.install import CoreHost, Installer, Outputs
from agent.delivery.store import ModelStore
from agent.errors import EdgeloopError, ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.serving.server import LoadGenerator
from agent.wire.messages import Command, EventKind, ReplyStatus, ReplyTo, State
from agent.wire.reasons import Reason

log = logging.getLogger(__name__)

SEEN_COMMANDS = 256


class CommandHost(CoreHost, Protocol):
    """What the verbs need from the agent core (replies and events go to :class:`Outputs`)."""

    def state(self) -> State: ...
    def serving_delegate(self) -> str | None: ...
    def set_telemetry_interval(self, seconds: float | None) -> float:
        """Apply a new interval (None: keep it); returns the one in force."""
        ...


class Commands:
    def __init__(
        self,
        host: CommandHost,
        out: Outputs,
        *,
        store: ModelStore,
        installer: Installer,
        guard: CommandGuard,
        loadgen: LoadGenerator,
        hw_root: str | Path,
        meter: Any,
    ) -> None:
        self.host = host
        self.out = out
        self.store = store
        self.installer = installer
        self.guard = guard
        self.loadgen = loadgen
        self.hw_root = hw_root
        self.meter = meter
        self._seen: OrderedDict[str, None] = OrderedDict()

    def handle(self, verb: str, msg: IncomingMessage) -> None:
        """One command message; ProtocolError / EdgeloopError go to the caller (it reports)."""
        cmd = Command.from_json(msg.payload, verb)
        to = ReplyTo(cmd.id, verb, msg.response_topic, msg.correlation_data)
        try:
            self.guard.check(cmd)  # signed where the verb changes what the device runs or does
        except ProtocolError as exc:
            log.warning("refused cmd/%s %s: %s", verb, cmd.id, exc)
            self.out.event(EventKind.INPUT_REJECTED, exc.code, exc.message, command=verb, id=cmd.id)
            self.out.reply(to, ReplyStatus.REJECTED, exc.code, exc.message)
            return
        if verb == "deploy":
            check_deploy_args(cmd.args)
        if cmd.id in self._seen and verb != "deploy":  # deploy dedups by release (P4, P16)
            self.out.reply(to, ReplyStatus.DUPLICATE, None, "command already handled")
            return
        self._seen[cmd.id] = None
        while len(self._seen) > SEEN_COMMANDS:
            self._seen.popitem(last=False)
        handlers: dict[str, Callable[[], None]] = {
            "deploy": lambda: self.installer.on_deploy(cmd, to),
            "rollback": lambda: self.rollback(to),
            "bench": lambda: self.bench(cmd, to),
            "config": lambda: self.config(cmd, to),
            "rebirth": lambda: self.rebirth(to),
            "state": lambda: self.out.reply(
                to, ReplyStatus.OK, None, "", state=self.host.state().to_dict()
            ),
        }
        handlers[verb]()

    def rollback(self, to: ReplyTo) -> None:
        """Abandon the install or trial in progress (its release stays counted). Going back to
        an older model is a NEW signed manifest of it with a higher release (edge-deploy
        rollback), never this command: so no command moves ``current`` below the slot's
        counter."""
        if self.installer.abort_for_rollback():
            self.out.reply(to, ReplyStatus.OK, None, "install abandoned")
            return
        self.out.reply(
            to,
            ReplyStatus.REJECTED,
            Reason.NO_INSTALL,
            "no install or trial to abandon; to go back to an older model send a signed "
            "manifest of it with a higher release (edge-deploy rollback --device ID)",
        )

    def bench(self, cmd: Command, to: ReplyTo) -> None:
        cur = self.store.current()
        if cur is None:
            self.out.reply(to, ReplyStatus.REJECTED, "no_model", "no model installed")
            return
        from agent.serving.bench import benchmark

        args = cmd.args
        path = self.store.model_path(cur.sha256)
        delegate = str(args.get("delegate") or self.host.serving_delegate() or "auto")
        self.out.reply(to, ReplyStatus.ACCEPTED, None, "benchmark started")

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                code = exc.code if isinstance(exc, EdgeloopError) else "bench_failed"
                self.out.reply(to, ReplyStatus.ERROR, code, str(exc))
                self.out.event(EventKind.BENCH_RESULT, code, str(exc), cmd_id=cmd.id)
                return
            data = result.to_dict()
            self.out.reply(to, ReplyStatus.OK, None, "benchmark done", result=data)
            self.out.event(EventKind.BENCH_RESULT, cmd_id=cmd.id, sha256=cur.sha256, result=data)

        self.host.background(
            "bench",
            lambda: benchmark(
                path,
                delegate,
                threads=args.get("threads"),
                runs=int(args.get("runs") or 50),
                hw_root=self.hw_root,
                meter=self.meter,
            ),
            done,
        )

    def config(self, cmd: Command, to: ReplyTo) -> None:
        args = cmd.args
        key = "telemetry_interval_s"
        interval = self.host.set_telemetry_interval(float(args[key]) if key in args else None)
        loadgen = args.get("loadgen")
        if isinstance(loadgen, dict):
            enabled = bool(loadgen.get("enabled", True))
            self.loadgen.set_rate(float(loadgen.get("rate_hz", 0)) if enabled else 0.0)
        applied = {
            "telemetry_interval_s": interval,
            "loadgen_rate_hz": self.loadgen.rate_hz,
        }
        self.out.reply(to, ReplyStatus.OK, None, "applied", **applied)

    def rebirth(self, to: ReplyTo) -> None:
        self.host.state_changed()
        self.out.reply(to, ReplyStatus.OK, None, "state published")


def check_deploy_args(args: dict[str, Any]) -> None:
    """The unsigned deploy arguments next to the manifest: wrong types are malformed input."""
    gates, delegate = args.get("gates"), args.get("delegate")
    if gates is not None and not isinstance(gates, dict):
        raise ProtocolError("cmd/deploy: args.gates must be an object")
    if delegate is not None and not (isinstance(delegate, str) and len(delegate) <= 512):
        raise ProtocolError("cmd/deploy: args.delegate must be a string")
