"""A scriptable host for the end-to-end delivery tests, plus small shared helpers.

``ScriptedHost`` does what ``deploy.push.Pusher`` does (publish ``cmd/deploy``, answer every
``need`` with chunk messages, collect replies and events) but each step can be bent: chunks
served in reverse order, twice, with wrong bytes for chosen indexes, needs answered twice, the
whole host -> device traffic recorded for a later replay. It runs on its own MQTT connection and
can be dropped at any moment (the agent just died), unlike a blocking ``Pusher.push``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.errors import ProtocolError
from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, TransportConfig
from agent.runtime import modelfile
from agent.wire.chunks import encode_chunk
from agent.wire.manifest import SignedManifest
from agent.wire.manifest_signing import model_fields, sign_manifest
from agent.wire.messages import Command, CommandReply, Event, NeedRequest
from agent.wire.signed import needs_signature, sign_command
from agent.wire.topics import Topics
from tests.agent_proc import AgentProcess, Observer, wait_for
from tests.broker import Broker
from tests.modelzoo import digits_data

if TYPE_CHECKING:
    from deploy.push import PushResult

GATES: dict[str, Any] = {"min_inferences": 20, "min_seconds": 0.5}

# Health defaults for installs that start without a deploy (a resume after a restart).
AGENT_CONFIG = """\
[broker]
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[health]
min_inferences = 20
min_seconds = 0.5
probe_timeout_s = 30.0
"""


def agent_config(directory: Path, *, require_targets: bool = False) -> list[str]:
    """``--config FILE`` arguments for a quick-gated agent (``require_targets``: as provisioned
    devices are, refusing manifests that name no device or class)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "agent-test.toml"
    path.write_text(("require_targets = true\n" if require_targets else "") + AGENT_CONFIG)
    return ["--config", str(path)]


@dataclass(frozen=True)
class Sent:
    """One host -> device publish, kept for replays."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None


Order = Callable[[list[int]], list[int]]


class ScriptedHost:
    def __init__(
        self, broker: Broker, device_id: str = "pi-01", prefix: str = "edgeloop", key: Any = None
    ) -> None:
        self.topics = Topics(prefix, device_id)
        self.key = key  # signs a deploy that carries gates, as edge-deploy does
        self.client_id = f"test-host-{uuid.uuid4().hex[:10]}"
        self.reply_topic = self.topics.reply(self.client_id)
        self._q: queue.Queue[IncomingMessage | None] = queue.Queue()
        self._lock = threading.Lock()
        self.models: dict[str, tuple[bytes, int]] = {}
        self.order: Order = lambda indexes: indexes  # which chunks, in which order, per need
        self.need_repeat = 1  # answer each need this many times
        self.corrupt: dict[int, int] = {}  # chunk index -> how many more times to send it wrong
        self.serving = True
        self.needs: list[NeedRequest] = []
        self.replies: list[CommandReply] = []
        self.events: list[Event] = []
        self.sent: list[Sent] = []
        self.bytes_sent = 0
        self.chunks_sent = 0
        self.transport = Transport(
            TransportConfig(
                host=broker.host, port=broker.port, client_id=self.client_id, clean_start=True,
                session_expiry_s=0,
                subscriptions=[(self.topics.need, 1), (self.topics.events, 1),
                               (self.reply_topic, 1)],
            ),
            self._q.put,
        )  # fmt: skip
        self._worker = threading.Thread(target=self._run, name="scripted-host", daemon=True)

    def __enter__(self) -> ScriptedHost:
        self.transport.start()
        if not self.transport.wait_connected(10):
            raise AssertionError("the scripted host could not connect")
        self._worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._worker.is_alive():
            self._q.put(None)
            self._worker.join(10)
        self.transport.stop(final=None)

    # ---- host -> device ----------------------------------------------------------------------
    def offer(self, model: bytes, signed: SignedManifest) -> None:
        """Answer needs for this model's chunks."""
        self.models[signed.manifest.sha256] = (model, signed.manifest.chunk_size)

    def publish(
        self, sent: Sent, *, expiry: int | None = None, record: bool = True, qos: int = 1
    ) -> None:
        handle = self.transport.publish(
            sent.topic, sent.payload, qos=qos, response_topic=sent.response_topic,
            correlation_data=sent.correlation, message_expiry_interval=expiry,
        )  # fmt: skip
        if qos and (not handle.wait(10) or handle.error):
            raise AssertionError(f"publish to {sent.topic} failed: {handle.error}")
        if record:
            with self._lock:
                self.sent.append(sent)

    def deploy(
        self,
        manifest: SignedManifest | Mapping[str, Any],
        *,
        gates: Mapping[str, Any] | None = None,
        cmd_id: str | None = None,
        expiry: int | None = None,
        extra_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``cmd/deploy``; returns the command id (= the correlation data). Without
        ``gates`` the agent's own (AGENT_CONFIG, the same as GATES) judge the trial and the
        command goes unsigned; with them it is signed by ``key`` as edge-deploy does."""
        envelope = manifest.to_dict() if isinstance(manifest, SignedManifest) else dict(manifest)
        args: dict[str, Any] = {"manifest": envelope}
        if gates:
            args["gates"] = dict(gates)
        args.update(extra_args or {})
        cmd_id, ts = cmd_id or uuid.uuid4().hex, time.time()
        auth = None
        if self.key is not None and needs_signature("deploy", args):
            target = {"device": self.topics.device_id}
            auth = sign_command(self.key, "deploy", cmd_id, args, ts, int(ts * 1000), target)
        cmd = Command("deploy", cmd_id, args, ts, auth)
        self.publish(
            Sent(self.topics.cmd("deploy"), cmd.to_json(), self.reply_topic, cmd.id.encode()),
            expiry=expiry,
        )
        return cmd.id

    def command(self, verb: str, args: Mapping[str, Any] | None = None, *,
                expiry: int | None = None) -> str:  # fmt: skip
        cmd = Command(verb, uuid.uuid4().hex, dict(args or {}), time.time())
        self.publish(
            Sent(self.topics.cmd(verb), cmd.to_json(), self.reply_topic, cmd.id.encode()),
            expiry=expiry,
        )
        return cmd.id

    def replay(self, messages: list[Sent]) -> None:
        for m in messages:
            self.publish(m, record=False)

    # ---- device -> host ----------------------------------------------------------------------
    def wait_reply(self, cmd_id: str, timeout: float = 30.0,
                   status: str | None = None) -> CommandReply:  # fmt: skip
        def found() -> CommandReply | None:
            with self._lock:
                for r in self.replies:
                    if r.id == cmd_id and (status is None or r.status == status):
                        return r
            return None

        reply: CommandReply = wait_for(found, timeout, f"reply {status or ''} to {cmd_id}")
        return reply

    def replies_to(self, cmd_id: str) -> list[CommandReply]:
        with self._lock:
            return [r for r in self.replies if r.id == cmd_id]

    def wait_event(self, kind: str, sha256: str | None = None, timeout: float = 60.0) -> Event:
        def found() -> Event | None:
            with self._lock:
                for e in self.events:
                    if e.kind == kind and (sha256 is None or e.data.get("sha256") == sha256):
                        return e
            return None

        event: Event = wait_for(found, timeout, f"event {kind} for {sha256}")
        return event

    def events_of(self, kind: str, sha256: str | None = None) -> list[Event]:
        with self._lock:
            return [
                e for e in self.events
                if e.kind == kind and (sha256 is None or e.data.get("sha256") == sha256)
            ]  # fmt: skip

    # ---- worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        while (msg := self._q.get()) is not None:
            with contextlib.suppress(ProtocolError):
                self._handle(msg)

    def _handle(self, msg: IncomingMessage) -> None:
        if msg.topic == self.topics.need:
            need = NeedRequest.from_json(msg.payload)
            with self._lock:
                self.needs.append(need)
            if self.serving and need.sha256 in self.models:
                for _ in range(self.need_repeat):
                    self._serve(need)
        elif msg.topic == self.reply_topic:
            reply = CommandReply.from_json(msg.payload)
            if reply.id == "?" and msg.correlation_data:  # a command too malformed to name:
                # matched by its correlation data, as deploy/command.py does
                reply = replace(reply, id=msg.correlation_data.decode(errors="replace"))
            with self._lock:
                self.replies.append(reply)
        elif msg.topic == self.topics.events:
            event = Event.from_json(msg.payload)
            with self._lock:
                self.events.append(event)

    def _serve(self, need: NeedRequest) -> None:
        data, cs = self.models[need.sha256]
        topic = self.topics.chunks(need.sha256)
        for index in self.order(need.indexes()):
            piece = data[index * cs : (index + 1) * cs]
            if not piece:
                continue
            if self.corrupt.get(index, 0) > 0:
                self.corrupt[index] -= 1
                piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
            self.publish(Sent(topic, encode_chunk(need.sha256, index, piece)), qos=0)
            self.bytes_sent += len(piece)
            self.chunks_sent += 1


# ---- serving checks ----------------------------------------------------------------------------


def infer(
    broker: Broker, device_id: str, inputs: list[Any], timeout: float = 20.0
) -> dict[str, Any]:
    """One inference request over MQTT; returns the JSON reply."""
    reply_topic = f"test/{uuid.uuid4().hex}"
    corr = uuid.uuid4().bytes
    with Observer(broker, [reply_topic]) as obs:
        obs.transport.publish(
            f"edgeloop/dev/{device_id}/infer", json.dumps({"inputs": inputs}),
            response_topic=reply_topic, correlation_data=corr,
        ).wait(5)  # fmt: skip
        msg = obs.wait_message(lambda m: m.correlation_data == corr, timeout, "inference reply")
        assert msg is not None
        result: dict[str, Any] = json.loads(msg.payload)
        return result


def assert_digits_serving(agent: AgentProcess, sha256: str) -> None:
    """The retained state names ``sha256`` and an inference on it answers correctly."""
    state = agent.state()
    assert state is not None and state["model"] is not None, state
    assert state["model"]["sha256"] == sha256, (state["model"], sha256)
    x, labels = digits_data()
    body = infer(agent.broker, agent.device_id, [x[0].tolist()])
    assert body["ok"] is True, body
    assert body["model"]["sha256"] == sha256
    assert int(np.argmax(body["outputs"][0])) == int(labels[0])


def sign_model(
    model: Path | bytes,
    key: Any,
    *,
    release: int,
    name: str = "digits",
    chunk_size: int = 64 * 1024,
    describe: bool = True,
    now: float | None = None,
    ttl_s: int = 3600,
    **overrides: Any,
) -> SignedManifest:
    """Sign like ``edge-deploy push`` does (``build_manifest``: variant and requirements read
    from the file); ``describe=False`` signs bytes that are no model at all; ``overrides``
    replace manifest fields before signing."""
    data = model.read_bytes() if isinstance(model, Path) else model
    fields: dict[str, Any] = model_fields(data, chunk_size)
    created = int(time.time() if now is None else now)
    fields.update(name=name, version=f"1.{release}", release=release, created=created,
                  expires=created + ttl_s)  # fmt: skip
    if describe:
        info = modelfile.inspect(data)
        fields["variant"] = {"recipe": "test", "dtype": info.quantization, "delegate": "auto"}
        fields["requirements"] = {
            "accelerator": "edgetpu" if info.is_edgetpu else None,
            "runtimes": [],
            "operators": [{"name": o.name, "version": o.version} for o in info.operators],
            "memory_mb": None,
        }
    fields.update(overrides)
    return sign_manifest(fields, key, now=now)


def push_digits(
    broker: Broker,
    key: Any,
    device_id: str = "pi-01",
    *,
    version: str = "1",
    timeout_s: float = 120,
) -> PushResult:
    """``edge-deploy push`` of digits_int8 release 1 with quick gates (the tests assert it)."""
    from deploy.mqtt import BrokerAddress
    from deploy.push import push_model
    from tests.modelzoo import model

    address = BrokerAddress(broker.host, broker.port)
    return push_model(
        model("digits_int8"),
        device_id,
        address,
        key,
        name="digits",
        version=version,
        release=1,
        gates=GATES,
        progress=None,
        timeout_s=timeout_s,
    )


def seed_state(root: Path) -> tuple[Path, str]:
    """A state dir where a real agent committed digits_int8 r1 (signed by a throwaway key:
    pointers are not re-verified, so any test key can sign what comes next). Returns the
    directory and the model's sha256; tests run on a copy (``SeededDevice.start``) instead of
    installing the old model again."""
    from deploy.keys import init_keys, load_private

    init_keys(root / "keys")
    broker = Broker(root / "broker").start()
    try:
        agent = AgentProcess(broker, root / "state", root / "keys" / "edgeloop.pub",
                             extra_args=agent_config(root)).start()  # fmt: skip
        try:
            key = load_private(root / "keys")
            result = push_digits(broker, key, version="1.1", timeout_s=60)
            assert result.ok and result.outcome == "committed", result
        finally:
            assert agent.stop() == 0
    finally:
        broker.stop()
    return root / "state", result.sha256


@dataclass
class SeededDevice:
    """The preamble of the delivery end-to-end tests (the ``seeded`` fixture): a broker, the
    host key the agent trusts, and pi-01 to be started on a copy of the seeded state dir where
    digits_int8 r1 (``old_sha``) is committed."""

    broker: Broker
    key: Any
    old_sha: str
    seed_dir: Path
    tmp_path: Path
    start_agent: Callable[..., AgentProcess]

    def sign(self, model: Path | bytes, *, release: int = 2, **kwargs: Any) -> SignedManifest:
        """``sign_model`` with the trusted key; release 2 unless told (r1 is committed)."""
        return sign_model(model, self.key, release=release, **kwargs)

    def start(self, **kwargs: Any) -> AgentProcess:
        """Copy the seeded state dir and run a quick-gated agent on it (waits until
        subscribed); ``kwargs`` go to ``start_agent``, ``extra_args`` after the config,
        ``require_targets=True`` into it."""
        import shutil

        state_dir = self.tmp_path / "state-pi-01"
        shutil.copytree(self.seed_dir, state_dir)
        required = bool(kwargs.pop("require_targets", False))
        args = agent_config(self.tmp_path, require_targets=required)
        args += list(kwargs.pop("extra_args", []))
        kwargs.setdefault("ready_check", True)
        return self.start_agent(state_dir=state_dir, extra_args=args, **kwargs)

    def host(
        self, model: Path | bytes | None = None, signed: SignedManifest | None = None
    ) -> ScriptedHost:
        """A scripted host on the broker (enter it to connect), offering ``model`` if given."""
        host = ScriptedHost(self.broker, key=self.key)
        if model is not None and signed is not None:
            host.offer(model.read_bytes() if isinstance(model, Path) else model, signed)
        return host
