"""One push to many devices: a signed manifest per device, one shared chunk stream for all.

:class:`WavePusher` sends ``cmd/deploy`` to every device of a wave with its own manifest
(signed and addressed to it, as ``edge-deploy push`` does) and ``"stream": true``. Each device
that accepts subscribes to ``{p}/models/{sha256}/chunks`` and joins with a need marked
``stream``. Once every device has joined or decided (or ``join_wait_s`` after the deploys),
the host publishes the artifact's chunks there once, in order, paced by its socket; a device
then asks through its own ``need`` topic only for what the stream passed without reaching it,
and those needs are answered on its own chunk topic (agent.wire.stream). So the host publishes
about the model's size once per wave, plus the repairs, instead of once per device.

With ``stream=False`` the same class is the per-device pull (each device's needs answered on
its own topic): the baseline the egress figure compares against (deploy.sim.egress).
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ProtocolError
from agent.mqtt.types import IncomingMessage, PublishHandle
from agent.wire.manifest import SignedManifest
from agent.wire.messages import Command, CommandReply, Event, NeedRequest
from agent.wire.stream import StreamCursor
from agent.wire.topics import (
    Topics,
    host_reply_filter,
    host_subscriptions,
    model_stream_topic,
    parse_topic,
)
from deploy.mqtt import BrokerAddress, connect, new_client_id
from deploy.push import PushResult, apply_event, apply_reply, publish_chunks

log = logging.getLogger(__name__)

#: The stream starts once every device of the wave has joined, or this long after the deploys
#: (a device that joined re-joins after each 3 s without a chunk, agent.wire.stream).
JOIN_WAIT_S = 3.0
#: Chunks published on the stream per turn of the loop (needs are answered between turns).
STREAM_BATCH = 16


@dataclass
class WaveResult:
    """What a wave cost the host and how each device ended."""

    sha256: str
    size: int
    results: dict[str, PushResult]
    stream: bool
    stream_chunks: int = 0  # chunk messages on the shared stream
    stream_bytes: int = 0  # their data bytes
    repair_chunks: int = 0  # chunk messages on devices' own topics (needs answered)
    repair_bytes: int = 0
    seconds: float = 0.0

    @property
    def bytes_published(self) -> int:
        """Chunk data bytes the host published: the stream once plus every answered need."""
        return self.stream_bytes + self.repair_bytes

    @property
    def egress_ratio(self) -> float:
        """Host bytes published / model size (1.0 = the model sent once for the whole wave)."""
        return self.bytes_published / max(1, self.size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "devices": len(self.results),
            "committed": sum(r.ok for r in self.results.values()),
            "stream": self.stream,
            "stream_bytes": self.stream_bytes,
            "repair_bytes": self.repair_bytes,
            "repair_chunks": self.repair_chunks,
            "egress_ratio": round(self.egress_ratio, 4),
            "seconds": self.seconds,
        }


@dataclass
class _Device:
    topics: Topics
    correlation: bytes
    result: PushResult
    joined: bool = False
    done: bool = False


@dataclass
class _Wave:
    data: bytes
    sha256: str
    chunk_size: int
    devices: dict[str, _Device]
    out: WaveResult
    cursor: StreamCursor
    sent_at: float = 0.0
    stream_started: float | None = None
    last: PublishHandle | None = None
    pending: set[str] = field(default_factory=set)


class WavePusher:
    """A push session to many devices over one MQTT connection (``with WavePusher(...) as w``).

    ``on_result(device, result)`` is called as each device reaches its verdict (a rollout
    records it at once); ``on_event(device, event)`` for every event of the push."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        prefix: str = "edgeloop",
        stream: bool = True,
        join_wait_s: float = JOIN_WAIT_S,
        on_result: Callable[[str, PushResult], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self.stream = stream
        self.join_wait_s = join_wait_s
        self.on_result = on_result
        self.on_event = on_event
        self.client_id = new_client_id("wave")
        self.inbox: queue.Queue[IncomingMessage] = queue.Queue()
        subs = [*host_subscriptions(prefix, kinds=("need", "events"))]
        subs.append(host_reply_filter(prefix, self.client_id))
        self.transport = broker.client("wave", subs, self.inbox.put, client_id=self.client_id)

    def __enter__(self) -> WavePusher:
        connect(self.transport, hint="check --broker HOST:PORT and that the broker runs")
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.stop(final=None)

    # ---- the wave ------------------------------------------------------------------------------
    def push(
        self,
        model: Path | bytes,
        manifests: Mapping[str, SignedManifest],
        *,
        timeout_s: float = 600.0,
        gates: Mapping[str, Any] | None = None,
        command_expiry_s: int = 300,
    ) -> WaveResult:
        """Deploy ``model`` to every device of ``manifests`` (device id -> its manifest, all of
        the same bytes and chunk size) and wait for each verdict or ``timeout_s``."""
        wave = self._wave(model, manifests)
        t0 = time.monotonic()
        for device_id, signed in manifests.items():
            self._deploy(wave, device_id, signed, gates, command_expiry_s)
        wave.sent_at = time.monotonic()
        deadline = t0 + timeout_s
        while wave.pending and time.monotonic() < deadline:
            streaming = self._stream_turn(wave)
            try:
                msg = self.inbox.get(timeout=0.0 if streaming else 0.2)
            except queue.Empty:
                continue
            self._handle(wave, msg)
            while True:  # everything that is already here before the next stream turn
                try:
                    self._handle(wave, self.inbox.get_nowait())
                except queue.Empty:
                    break
        wave.out.seconds = round(time.monotonic() - t0, 3)
        for device_id in sorted(wave.pending):
            r = wave.devices[device_id].result
            r.seconds = wave.out.seconds
            if self.on_result:
                self.on_result(device_id, r)
        return wave.out

    def _wave(self, model: Path | bytes, manifests: Mapping[str, SignedManifest]) -> _Wave:
        if not manifests:
            raise ValueError("a wave needs at least one device")
        data = model.read_bytes() if isinstance(model, Path) else model
        firsts = {(s.manifest.sha256, s.manifest.chunk_size) for s in manifests.values()}
        if len(firsts) != 1:
            raise ValueError(
                "every manifest of a wave must name the same bytes and chunk size "
                f"(got {len(firsts)} different): push different models in separate waves"
            )
        ((sha, chunk_size),) = firsts
        m = next(iter(manifests.values())).manifest
        if len(data) != m.size:
            raise ValueError(f"the model has {len(data)} bytes, its manifest says {m.size}")
        devices = {
            d: _Device(
                Topics(self.prefix, d),
                b"",
                PushResult(False, "timeout", None, "no verdict in time", sha, s.manifest.release),
            )
            for d, s in manifests.items()
        }
        out = WaveResult(sha, len(data), {d: dev.result for d, dev in devices.items()}, self.stream)
        return _Wave(
            data, sha, chunk_size, devices, out, StreamCursor(m.chunk_count), pending=set(devices)
        )

    def _deploy(
        self,
        wave: _Wave,
        device_id: str,
        signed: SignedManifest,
        gates: Mapping[str, Any] | None,
        command_expiry_s: int,
    ) -> None:
        args: dict[str, Any] = {"manifest": signed.to_dict()}
        if gates:
            args["gates"] = dict(gates)
        if self.stream:
            args["stream"] = True
        cmd = Command("deploy", uuid.uuid4().hex, args, time.time())
        dev = wave.devices[device_id]
        dev.correlation = cmd.id.encode()
        self.transport.publish(
            dev.topics.cmd("deploy"),
            cmd.to_json(),
            qos=1,
            response_topic=dev.topics.reply(self.client_id),
            correlation_data=dev.correlation,
            message_expiry_interval=command_expiry_s,
        )

    # ---- the stream ----------------------------------------------------------------------------
    def _stream_turn(self, wave: _Wave) -> bool:
        """Publish the next batch of the stream when it is time; True while it runs."""
        cursor = wave.cursor
        if not self.stream or cursor.done:
            return False
        if wave.stream_started is None:
            joined = [d for d in wave.pending if wave.devices[d].joined]
            waited = time.monotonic() - wave.sent_at >= self.join_wait_s
            if not joined or (len(joined) < len(wave.pending) and not waited):
                return False
            wave.stream_started = time.monotonic()
            log.info("streaming %s to %d devices", wave.sha256[:12], len(joined))
        if wave.last is not None and not wave.last.done():
            return True  # the last batch is not on the socket yet: let the needs through
        end = min(cursor.chunk_count, cursor.published + STREAM_BATCH)
        topic = model_stream_topic(self.prefix, wave.sha256)
        sent = publish_chunks(
            self.transport,
            topic,
            wave.sha256,
            wave.data,
            wave.chunk_size,
            range(cursor.published, end),
        )
        cursor.published = end
        wave.last = sent.last
        wave.out.stream_chunks += sent.chunks
        wave.out.stream_bytes += sent.bytes
        return True

    # ---- device -> host ------------------------------------------------------------------------
    def _handle(self, wave: _Wave, msg: IncomingMessage) -> None:
        try:
            parsed = parse_topic(msg.topic, self.prefix)
            dev = wave.devices.get(parsed.device_id)
            if dev is None or dev.done:
                return
            if parsed.kind == "need":
                self._on_need(wave, dev, NeedRequest.from_json(msg.payload))
            elif parsed.kind == "reply":
                if msg.correlation_data == dev.correlation:
                    self._verdict(
                        wave,
                        parsed.device_id,
                        apply_reply(CommandReply.from_json(msg.payload), dev.result),
                    )
            elif parsed.kind == "events":
                event = Event.from_json(msg.payload)
                if event.data.get("sha256") != wave.sha256:
                    return
                if self.on_event:
                    self.on_event(parsed.device_id, event.to_dict())
                self._verdict(wave, parsed.device_id, apply_event(event, dev.result))
        except ProtocolError as exc:
            log.warning("ignoring a malformed message on %s: %s", msg.topic, exc)

    def _on_need(self, wave: _Wave, dev: _Device, need: NeedRequest) -> None:
        if need.sha256 != wave.sha256:
            return
        if need.stream:
            dev.joined = True
        indexes = wave.cursor.answer(need) if self.stream else need.indexes()
        if not indexes:
            return
        sent = publish_chunks(
            self.transport,
            dev.topics.chunks(wave.sha256),
            wave.sha256,
            wave.data,
            wave.chunk_size,
            indexes,
        )
        dev.result.chunks_sent += sent.chunks
        dev.result.bytes_sent += sent.bytes
        wave.out.repair_chunks += sent.chunks
        wave.out.repair_bytes += sent.bytes

    def _verdict(self, wave: _Wave, device_id: str, final: bool) -> None:
        if not final:
            return
        dev = wave.devices[device_id]
        dev.done = True
        wave.pending.discard(device_id)
        dev.result.seconds = round(time.monotonic() - wave.sent_at, 3)
        if self.on_result:
            self.on_result(device_id, dev.result)
