"""Push one model to one device: sign, announce, serve the chunks it asks for, wait for the verdict.

The transfer is pull-based: the device asks for chunk windows on ``{p}/dev/{id}/need`` and this
process answers each with chunk messages on ``{p}/dev/{id}/chunks/{sha256}``. So a reconnect or
an agent restart costs only the missing chunks, and the device sets the pace. The verdict is
the device's ``committed`` / ``rolled_back`` / ``rejected`` (event or command reply).
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from agent.errors import ProtocolError
from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, PublishHandle
from agent.runtime import modelfile
from agent.wire.chunks import encode_chunk
from agent.wire.manifest import DEFAULT_CHUNK_SIZE, DEFAULT_SLOT, SignedManifest
from agent.wire.manifest_signing import model_fields, sign_manifest
from agent.wire.messages import (
    CommandReply,
    Event,
    EventKind,
    NeedRequest,
    ReplyStatus,
    State,
)
from agent.wire.topics import Topics
from deploy.command import build_command
from deploy.mqtt import BrokerAddress, connect, new_client_id

log = logging.getLogger(__name__)

__all__ = [
    "FINAL_EVENTS",
    "BrokerAddress",
    "PushResult",
    "Pusher",
    "apply_event",
    "apply_reply",
    "build_manifest",
    "publish_chunks",
    "push_model",
    "release_above",
]

FINAL_EVENTS = {EventKind.COMMITTED, EventKind.ROLLED_BACK, EventKind.REJECTED}


@dataclass
class PushResult:
    ok: bool
    outcome: str  # committed | rolled_back | rejected | duplicate | timeout
    code: str | None
    message: str
    sha256: str
    release: int
    bytes_sent: int = 0
    chunks_sent: int = 0
    seconds: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "events"} | {"events": self.events}


def build_manifest(
    model: Path,
    private_key: Any,
    *,
    name: str,
    version: str,
    release: int,
    recipe: str = "unknown",
    delegate: str = "auto",
    ttl_s: int = 7 * 24 * 3600,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    targets: Mapping[str, list[str]] | None = None,
    slot: str = DEFAULT_SLOT,
) -> SignedManifest:
    """Inspect the model, fill variant and requirements from it, and sign. ``targets``
    ({"devices": [...], "classes": [...]}) and ``slot`` are signed: a device refuses a
    manifest not addressed to it or naming another slot than the one it serves, and keeps
    its anti-rollback counter per slot, whatever the model's name."""
    info = modelfile.inspect(model)
    fields = model_fields(model, chunk_size)
    now = int(time.time())
    fields.update(
        name=name,
        version=version,
        release=release,
        created=now,
        expires=now + ttl_s,
        variant={"recipe": recipe, "dtype": info.quantization, "delegate": delegate},
        requirements={
            "accelerator": "edgetpu" if info.is_edgetpu else None,
            "runtimes": [],
            "operators": [{"name": o.name, "version": o.version} for o in info.operators],
            "memory_mb": None,
        },
    )
    if targets is not None:
        fields["targets"] = {k: list(v) for k, v in targets.items()}
    fields["slot"] = slot
    return sign_manifest(fields, private_key)


def release_above(state: State | None) -> int:
    """The lowest release a device accepts next: above its slot's counter (``slot_release``,
    which a failed install also advanced) and the release it serves, whatever the model's name
    (one slot per device: a renamed model shares the counter). 1 when nothing is known."""
    if state is None:
        return 1
    seen = [state.slot_release, state.model.release if state.model else None]
    return max((r for r in seen if r is not None), default=0) + 1


class Pusher:
    """One push session over its own MQTT connection (a host worker)."""

    def __init__(
        self,
        broker: BrokerAddress,
        device_id: str,
        *,
        prefix: str = "edgeloop",
        progress: TextIO | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        key: Any | None = None,
    ) -> None:
        self.topics = Topics(prefix, device_id)
        self.key = key  # signs a deploy command that carries gates (agent.wire.signed)
        self.client_id = new_client_id("push")
        self.reply_topic = self.topics.reply(self.client_id)
        self.inbox: queue.Queue[IncomingMessage] = queue.Queue()
        self.progress = progress
        self.on_event = on_event
        self.transport = broker.client(
            "push",
            [self.topics.need, self.topics.events, self.reply_topic],
            self.inbox.put,
            client_id=self.client_id,
        )

    def __enter__(self) -> Pusher:
        connect(self.transport, hint="check --broker HOST:PORT and that the broker runs")
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.stop(final=None)

    def push(
        self,
        model: Path,
        signed: SignedManifest,
        *,
        timeout_s: float = 600.0,
        gates: Mapping[str, Any] | None = None,
        command_expiry_s: int = 300,
    ) -> PushResult:
        data = model.read_bytes()
        m = signed.manifest
        result = PushResult(False, "timeout", None, "no verdict in time", m.sha256, m.release)
        correlation = self.announce(signed, gates=gates, command_expiry_s=command_expiry_s)
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        chunk_topic = self.topics.chunks(m.sha256)
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            done = self._handle(msg, m.sha256, correlation, data, chunk_topic, result)
            if done:
                break
        result.seconds = round(time.monotonic() - t0, 3)
        if self.progress:
            self.progress.write("\n")
        return result

    def announce(
        self,
        signed: SignedManifest,
        *,
        gates: Mapping[str, Any] | None = None,
        command_expiry_s: int = 300,
        wait_s: float | None = 10.0,
        stream: bool = False,
    ) -> bytes:
        """Publish the deploy command (waiting ``wait_s`` for the broker's PUBACK, or not at
        all with None); returns its correlation data. ``stream``: the device follows the shared
        chunk stream of the artifact (deploy.fleet.fleet_push) and repairs through its need."""
        self._chunk_size = signed.manifest.chunk_size  # serve at the size it was signed with
        args: dict[str, Any] = {"manifest": signed.to_dict()}
        if gates:
            args["gates"] = dict(gates)
        if stream:
            args["stream"] = True
        cmd = build_command("deploy", self.topics.device_id, args, self.key)
        # Subscriptions are in place once connected (the transport subscribes before it
        # reports the connection), so no need request can be missed.
        info = self.transport.publish(
            self.topics.cmd("deploy"),
            cmd.to_json(),
            qos=1,
            response_topic=self.reply_topic,
            correlation_data=cmd.id.encode(),
            message_expiry_interval=command_expiry_s,
        )
        if wait_s is not None:
            info.wait(wait_s)
        return cmd.id.encode()

    def _handle(
        self,
        msg: IncomingMessage,
        sha: str,
        correlation: bytes,
        data: bytes,
        chunk_topic: str,
        result: PushResult,
    ) -> bool:
        try:
            if msg.topic == self.topics.need:
                need = NeedRequest.from_json(msg.payload)
                if need.sha256 == sha:
                    self._serve(need, data, chunk_topic, result)
                return False
            if msg.topic == self.reply_topic:
                if msg.correlation_data != correlation:
                    return False
                reply = CommandReply.from_json(msg.payload)
                return self._on_reply(reply, result)
            if msg.topic == self.topics.events:
                event = Event.from_json(msg.payload)
                if event.data.get("sha256") != sha:
                    return False
                if self.on_event:
                    self.on_event(event.to_dict())
                self._show(event.kind, event.data)
                return apply_event(event, result)
        except ProtocolError as exc:
            log.warning("ignoring a malformed message on %s: %s", msg.topic, exc)
        return False

    def _on_reply(self, reply: CommandReply, result: PushResult) -> bool:
        if reply.status == ReplyStatus.ACCEPTED:
            self._show("accepted", {})
        elif reply.status == ReplyStatus.DUPLICATE and reply.message == "already installing":
            self._show("resuming", {})
        return apply_reply(reply, result)

    def _wanted(self, need: NeedRequest) -> list[int]:
        """The indexes of ``need`` to answer on the device's own chunk topic."""
        return need.indexes()

    def _serve(self, need: NeedRequest, data: bytes, topic: str, result: PushResult) -> None:
        indexes = self._wanted(need)
        if not indexes:
            return
        n, sent, _last = publish_chunks(
            self.transport, topic, need.sha256, data, self._chunk_size, indexes
        )
        result.chunks_sent += n
        result.bytes_sent += sent
        self._show("transfer", {"sent": result.bytes_sent, "size": len(data)})

    _chunk_size = DEFAULT_CHUNK_SIZE  # push() sets it from the signed manifest

    def _show(self, phase: str, data: Mapping[str, Any]) -> None:
        if self.progress is None:
            return
        if phase == "transfer":
            size = max(1, int(data["size"]))
            sent = int(data["sent"])
            frac = min(1.0, sent / size)
            bar = "#" * int(frac * 30)
            self.progress.write(f"\rtransfer [{bar:<30}] {sent / 2**20:7.2f} MiB sent")
        else:
            self.progress.write(f"\r{phase:<60}")
        self.progress.flush()


def apply_reply(reply: CommandReply, result: PushResult) -> bool:
    """Fold a device's reply to ``cmd/deploy`` into ``result``; True when it is the verdict."""
    if reply.status == ReplyStatus.ACCEPTED:
        return False
    if reply.status == ReplyStatus.DUPLICATE and reply.message == "already installing":
        # the device is resuming this very transfer (after a restart or reconnect): keep
        # serving its needs and wait for the verdict event
        return False
    if reply.status == ReplyStatus.DUPLICATE and reply.message == "already installed":
        result.ok, result.outcome = True, "duplicate"
    elif reply.status == ReplyStatus.DUPLICATE:
        result.ok, result.outcome = False, "duplicate"
    elif reply.status == ReplyStatus.OK:
        result.ok, result.outcome = True, str(reply.code or "committed")
    else:
        result.ok = False
        result.outcome = "rejected" if reply.status == ReplyStatus.REJECTED else "rolled_back"
    result.code, result.message = reply.code, reply.message
    return True


def apply_event(event: Event, result: PushResult) -> bool:
    """Record a device's event about this push in ``result``; True when it is the verdict."""
    result.events.append(event.to_dict())
    if event.kind not in FINAL_EVENTS:
        return False
    result.ok = event.kind == EventKind.COMMITTED
    result.outcome = event.kind
    result.code = event.code
    result.message = event.message or event.kind
    return True


class Published(NamedTuple):
    chunks: int
    bytes: int  # chunk data bytes (headers not counted)
    last: PublishHandle | None  # resolves once the last frame is written to the socket


def publish_chunks(
    transport: Transport,
    topic: str,
    sha256: str,
    data: bytes,
    chunk_size: int,
    indexes: Iterable[int],
) -> Published:
    """Publish the chunk frames of ``data`` at ``indexes`` on ``topic`` (a device's chunk topic
    or the shared stream ``{p}/models/{sha256}/chunks``)."""
    size = len(data)
    view = memoryview(data)  # slices without copies: encode_chunk copies each chunk once
    chunks = sent = 0
    last = None
    for index in indexes:
        start = index * chunk_size
        if start >= size:
            continue
        piece = view[start : start + chunk_size]
        # QoS 0: a chunk lost with the link is asked for again by the device, while a
        # QoS 1 one is re-sent by the broker after every reconnect even when the device
        # already has it (measured: 1.7x the model size over 5 link flaps)
        last = transport.publish(topic, encode_chunk(sha256, index, piece), qos=0)
        chunks += 1
        sent += len(piece)
    return Published(chunks, sent, last)


def push_model(
    model: Path,
    device_id: str,
    broker: BrokerAddress,
    private_key: Any,
    *,
    name: str,
    version: str,
    release: int | None = None,
    prefix: str = "edgeloop",
    recipe: str = "unknown",
    delegate: str = "auto",
    gates: Mapping[str, Any] | None = None,
    timeout_s: float = 600.0,
    progress: TextIO | None = sys.stderr,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    slot: str = DEFAULT_SLOT,
) -> PushResult:
    """Sign and push ``model`` for ``slot`` on ``device_id``; the release defaults to the
    current time in milliseconds."""
    release = int(time.time() * 1000) if release is None else release
    signed = build_manifest(
        model,
        private_key,
        name=name,
        version=version,
        release=release,
        recipe=recipe,
        delegate=delegate,
        chunk_size=chunk_size,
        targets={"devices": [device_id]},
        slot=slot,
    )
    with Pusher(broker, device_id, prefix=prefix, progress=progress, key=private_key) as pusher:
        pusher._chunk_size = signed.manifest.chunk_size
        return pusher.push(model, signed, timeout_s=timeout_s, gates=gates)
