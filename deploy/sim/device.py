"""One simulated device: the agent's side of the protocol without a model or an interpreter.

A :class:`SimDevice` is pure protocol logic: it returns the messages to publish (``Out``) and
never touches a socket. It builds every payload with the agent's typed messages
(:class:`~agent.wire.messages.State`, ``Telemetry``, ``Event``, ``CommandReply``,
``NeedRequest``), parses commands with ``Command.from_json``, authenticates deploys with
``verify_manifest`` against the trusted keys, and pulls chunks through :mod:`deploy.sim.install`.
What becomes of an accepted install (commit, install failure, trial failure, going offline) is
drawn once per (device, model, release) from the configured rates, so a run is reproducible;
an artifact the device has already served (the model it started with, or one it committed)
always commits again, so a roll-back to the last good model succeeds whatever the rates.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ManifestError, ProtocolError
from agent.wire.ed25519 import PublicKey
from agent.wire.manifest_signing import verify_manifest
from agent.wire.messages import (
    Command,
    CommandReply,
    Event,
    EventKind,
    ModelRef,
    ReplyStatus,
    State,
    Telemetry,
)
from agent.wire.reasons import Reason
from agent.wire.topics import Topics
from deploy.sim.install import Transfer
from deploy.sim.profile import DTYPE_FACTOR, Rates, SimClass

AGENT_VERSION = "sim-1"


@dataclass(frozen=True)
class Out:
    """One message to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    action: str = "publish"  # or "subscribe" / "unsubscribe" ``topic`` (the shared stream)


@dataclass
class SimDevice:
    device_id: str
    cls: SimClass
    trust: Mapping[str, PublicKey]
    rates: Rates = field(default_factory=Rates)
    prefix: str = "edgeloop"
    window_s: float = 10.0
    seq: int = 0  # the next telemetry window's seq (gapless from 0)
    current: ModelRef | None = None
    previous: ModelRef | None = None
    transfer: Transfer | None = None
    trial_until: float | None = None
    offline_until: float | None = None  # set when the device drops off the network
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = Topics(self.prefix, self.device_id)
        self.boot_id = uuid.uuid4().hex[:16]
        self._releases: dict[str, int] = {}
        self._seen_cmds: deque[str] = deque(maxlen=64)
        self._rng = random.Random(f"{self.rates.seed}:{self.device_id}")
        self._good: set[str] = set()  # artifacts this device has served: they always commit
        if self.current is not None:
            self._good.add(self.current.sha256)
            self._releases[self.current.name] = self.current.release or 0

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # ---- what the broker keeps for the device ------------------------------------------------
    def birth(self) -> Out:
        install: dict[str, Any] = {"state": "idle"}
        if self.transfer is not None:
            t = self.transfer
            install = {
                "state": "downloading",
                "sha256": t.manifest.sha256,
                "received": t.hashed,
                "chunks": t.manifest.chunk_count,
            }
        state = State(
            online=True,
            ts=None,
            boot_id=self.boot_id,
            agent_version=AGENT_VERSION,
            runtime={"name": self.cls.runtime, "version": self.cls.runtime_version},
            hardware=self.cls.hardware(),
            hardware_class=self.cls.hardware_class,
            model=self.current,
            install=install,
        )
        return Out(self.topics.state, state.to_json(), 1, True)

    def will(self) -> Out:
        return Out(self.topics.state, State.offline("lost").to_json(), 1, True)

    # ---- telemetry ---------------------------------------------------------------------------
    def window(self, now: float) -> Out:
        """The next telemetry window (seq is gapless: every call uses the next one)."""
        factor = 1.0
        if self.current is not None:
            factor = DTYPE_FACTOR.get(str(self.current.variant.get("dtype")), 1.0)
        p50 = self.cls.p50_ms * factor * self._rng.uniform(0.95, 1.05)
        n = int(self.window_s * 1000 / max(1.0, p50 * 4))
        tel = Telemetry(
            seq=self.seq,
            ts=round(now, 3),
            window_s=self.window_s,
            inferences=n,
            model=self.current,
            latency_ms={
                "p50": round(p50, 3),
                "p95": round(p50 * 1.3, 3),
                "p99": round(p50 * 1.6, 3),
                "max": round(p50 * 2, 3),
            },
            throughput=round(n / self.window_s, 3),
            rss_mb=round(self._rng.uniform(40, 44), 2),
            temp_c=round(self._rng.uniform(45, 55), 1),
        )
        self.seq += 1
        return Out(self.topics.telemetry, tel.to_json(), 1, False)

    # ---- messages to the device --------------------------------------------------------------
    def on_message(
        self,
        topic: str,
        payload: bytes,
        now: float,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> list[Out]:
        stream_sha = self.topics.stream_sha(topic)
        if stream_sha is not None:
            return self._on_chunk(stream_sha, payload, now, stream=True)
        try:
            parsed = self.topics.parse(topic)
        except ProtocolError:
            return []
        reply_to = (response_topic, correlation) if response_topic else None
        if parsed.kind == "chunks":
            return self._on_chunk(parsed.arg or "", payload, now)
        if parsed.kind != "cmd":
            return []
        try:
            cmd = Command.from_json(payload, parsed.arg or "")
        except ProtocolError as exc:
            return self._reply(
                reply_to, parsed.arg or "?", "", ReplyStatus.REJECTED, exc.code, exc.message
            )
        if cmd.id in self._seen_cmds:
            return self._reply(
                reply_to, cmd.verb, cmd.id, ReplyStatus.DUPLICATE, None, "command already handled"
            )
        self._seen_cmds.append(cmd.id)
        self._count(f"cmd_{cmd.verb}")
        if cmd.verb == "deploy":
            return self._on_deploy(cmd, reply_to, now)
        if cmd.verb == "rollback":
            return self._on_rollback(cmd, reply_to)
        if cmd.verb == "config":
            interval = cmd.args.get("telemetry_interval_s")
            if isinstance(interval, int | float):
                self.window_s = float(interval)
            return self._reply(reply_to, cmd.verb, cmd.id, ReplyStatus.OK, None, "applied")
        if cmd.verb == "bench":
            return self._reply(
                reply_to,
                cmd.verb,
                cmd.id,
                ReplyStatus.REJECTED,
                "no_model",
                "a simulated device runs no benchmark",
            )
        # rebirth, state
        out = self._reply(reply_to, cmd.verb, cmd.id, ReplyStatus.OK, None, "state published")
        return [self.birth(), *out]

    def _reply(
        self,
        to: tuple[str, bytes | None] | None,
        verb: str,
        cmd_id: str,
        status: str,
        code: str | None,
        message: str,
        **data: Any,
    ) -> list[Out]:
        if to is None:
            return []
        body = CommandReply(cmd_id, verb, status, code, message, data).to_json()
        return [Out(to[0], body, 1, False, correlation_data=to[1])]

    def event(self, kind: str, code: str = "ok", message: str = "", **data: Any) -> Out:
        self._count(f"event_{kind}")
        return Out(self.topics.events, Event(kind, code, message, data).to_json(), 1, False)

    def _on_deploy(
        self, cmd: Command, to: tuple[str, bytes | None] | None, now: float
    ) -> list[Out]:
        try:
            m = verify_manifest(cmd.args.get("manifest", {}), self.trust, now=now)
        except ManifestError as exc:
            return [
                *self._reply(to, "deploy", cmd.id, ReplyStatus.REJECTED, exc.code, exc.message),
                self.event(EventKind.REJECTED, exc.code, exc.message, cmd_id=cmd.id),
            ]
        ref: dict[str, Any] = {
            "sha256": m.sha256,
            "name": m.name,
            "version": m.version,
            "release": m.release,
        }
        t = self.transfer
        if t is not None:
            same = t.manifest.sha256 == m.sha256 and t.manifest.release == m.release
            if not same:
                return self._reply(
                    to,
                    "deploy",
                    cmd.id,
                    ReplyStatus.REJECTED,
                    Reason.BUSY,
                    f"installing {t.manifest.name} now",
                    **ref,
                )
            return [
                *self._reply(
                    to,
                    "deploy",
                    cmd.id,
                    ReplyStatus.DUPLICATE,
                    Reason.REPLAYED,
                    "already installing",
                    **ref,
                ),
                *self._need(t, now, force=True),
            ]
        if m.release <= self._releases.get(m.name, 0):
            cur = self.current is not None and self.current.sha256 == m.sha256
            msg = "already installed" if cur else "replayed"
            return self._reply(
                to, "deploy", cmd.id, ReplyStatus.DUPLICATE, Reason.REPLAYED, msg, **ref
            )
        self._releases[m.name] = m.release
        fate = (
            "commit"
            if m.sha256 in self._good
            else self.rates.fate(self.device_id, m.sha256, m.release)
        )
        t = self.transfer = Transfer(m, fate, to, cmd.id)
        follow: list[Out] = []
        if cmd.args.get("stream") is True:  # subscribed before the join (the first need)
            t.follow_stream()
            follow = [Out(self.topics.model_stream(m.sha256), b"", 0, action="subscribe")]
        return [
            *self._reply(to, "deploy", cmd.id, ReplyStatus.ACCEPTED, None, "accepted", **ref),
            self.event(EventKind.INSTALL_ACCEPTED, cmd_id=cmd.id, **ref),
            *follow,
            *self._need(t, now),
            self.birth(),
        ]

    def _need(self, t: Transfer, now: float, *, force: bool = False) -> list[Out]:
        """The transfer's next need, and leaving the shared stream once it is done with it."""
        need = t.next_need(now, force=force)
        out = [Out(self.topics.need, need.to_json(), 1)] if need else []
        return out + self._unfollow(t, done=False)

    def _unfollow(self, t: Transfer, *, done: bool = True) -> list[Out]:
        if not t.following or (t.stream is not None and not done):
            return []
        t.following = False
        return [Out(self.topics.model_stream(t.manifest.sha256), b"", 0, action="unsubscribe")]

    def _on_rollback(self, cmd: Command, to: tuple[str, bytes | None] | None) -> list[Out]:
        if self.transfer is not None:
            t = self.transfer
            ref = t.ref()
            self.transfer, self.trial_until = None, None
            return [
                *self._unfollow(t),
                *self._reply(to, "rollback", cmd.id, ReplyStatus.OK, None, "install abandoned"),
                self.event(EventKind.ROLLED_BACK, "rollback_command", "install abandoned", **ref),
                self.birth(),
            ]
        if self.previous is None:
            return self._reply(
                to,
                "rollback",
                cmd.id,
                ReplyStatus.REJECTED,
                Reason.NO_LAST_GOOD,
                "no previous model",
            )
        left = self.current
        self.current, self.previous = self.previous, self.current
        data = {"sha256": self.current.sha256, "from": left.sha256 if left else None}
        return [
            *self._reply(
                to,
                "rollback",
                cmd.id,
                ReplyStatus.OK,
                None,
                "rolled back",
                sha256=self.current.sha256,
            ),
            self.event(EventKind.ROLLED_BACK, "rollback_command", "rolled back", **data),
            self.birth(),
        ]

    def _on_chunk(
        self, sha256: str, payload: bytes, now: float, *, stream: bool = False
    ) -> list[Out]:
        t = self.transfer
        if t is None or t.manifest.sha256 != sha256 or self.trial_until is not None:
            return []
        t.receive(payload, now, stream=stream)
        if t.fate == "offline" and t.hashed * 2 >= t.manifest.chunk_count:
            t.fate = "commit"  # comes back after offline_s and finishes the transfer
            self.offline_until = now + self.rates.offline_s
            return []
        if not t.complete:
            return self._need(t, now)
        return [*self._unfollow(t), *self._verified(t, now)]

    def _verified(self, t: Transfer, now: float) -> list[Out]:
        problem = t.verify()
        if problem is None and t.fate == "install_fail":
            problem = Reason.PROBE_FAILED
        if problem is not None:
            self.transfer = None
            return [
                *self._reply(
                    t.reply_to,
                    "deploy",
                    t.cmd_id,
                    ReplyStatus.ERROR,
                    problem,
                    "the model failed to load",
                    **t.ref(),
                ),
                self.event(EventKind.REJECTED, problem, "the model failed to load", **t.ref()),
                self.birth(),
            ]
        self.trial_until = now + self.rates.trial_s
        return [
            self.event(EventKind.INSTALL_VERIFIED, **t.ref()),
            self.event(EventKind.TRIAL_STARTED, **t.ref()),
        ]

    def tick(self, now: float) -> list[Out]:
        """Timers: the end of a trial, re-requests after a stalled transfer."""
        t = self.transfer
        if t is None:
            return []
        if self.trial_until is None:
            return self._need(t, now)
        if now < self.trial_until:
            return []
        self.transfer, self.trial_until = None, None
        m = t.manifest
        if t.fate == "trial_fail":
            msg = "p95 above the trial gate"
            return [
                *self._reply(
                    t.reply_to,
                    "deploy",
                    t.cmd_id,
                    ReplyStatus.ERROR,
                    Reason.HEALTH_FAILED,
                    msg,
                    **t.ref(),
                ),
                self.event(EventKind.ROLLED_BACK, Reason.HEALTH_FAILED, msg, **t.ref()),
                self.birth(),
            ]
        self.previous = self.current
        self.current = ModelRef(m.sha256, m.name, m.version, m.release, m.variant.to_dict())
        self._good.add(m.sha256)
        return [
            *self._reply(
                t.reply_to, "deploy", t.cmd_id, ReplyStatus.OK, "committed", "committed", **t.ref()
            ),
            self.event(EventKind.COMMITTED, **t.ref()),
            self.birth(),
        ]
