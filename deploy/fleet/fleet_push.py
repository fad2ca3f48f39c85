"""Many pushes over one MQTT connection: what a rollout wave uses instead of one
:class:`~deploy.push.Pusher` (and one connection, and one blocking wait) per device.

A :class:`FleetPusher` subscribes once to every device's ``need``, ``events`` and its own reply
topic (``{p}/dev/+/...``), announces the deploy commands of up to ``max_in_flight`` devices at a
time without waiting for each PUBACK, serves each device's need requests and collects each
verdict. The per-device protocol (the command, need serving, reply and event handling) is the
:class:`~deploy.push.Pusher`'s own: each device gets a :class:`_Session`, a ``Pusher`` that
shares this connection. Devices still queued can be withdrawn (:meth:`cancel`): a rollout that
aborts notifies nobody after the abort.

With ``stream=True`` (the default) the devices announced together for one artifact share one
chunk stream, ``{p}/models/{sha256}/chunks`` (agent.wire.stream): a *run* of the stream starts
once every device of it has joined (its first need, marked ``stream``) or ``join_wait_s`` after
the first announcement, publishes every chunk once, in order, and each device repairs through
its own ``need`` only what the stream passed without reaching it. A device of that artifact
queued while a run is under way waits for the next run (the in-flight limit decides how many
devices one run serves), so a wave costs the host about the model's size, not N times it.

Single-threaded by design: the caller's thread calls :meth:`poll`, which sends, serves and
returns the verdicts; the MQTT thread only enqueues.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ProtocolError
from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, PublishHandle
from agent.wire.manifest import SignedManifest
from agent.wire.messages import NeedRequest
from agent.wire.stream import StreamCursor
from agent.wire.topics import Topics, host_subscriptions, model_stream_topic, parse_topic
from deploy.mqtt import BrokerAddress, connect, new_client_id
from deploy.push import Pusher, PushResult, publish_chunks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushJob:
    """One device to push to: its signed manifest and the model it names (a file, or its
    bytes)."""

    device: str
    signed: SignedManifest
    model: Path | bytes


#: A run of the stream starts once all its devices joined, or this long after its first deploy
#: (a joined device re-joins after each 3 s without a chunk, agent.wire.stream).
JOIN_WAIT_S = 3.0
#: Stream chunks published per turn of :meth:`FleetPusher.poll` (needs are served between).
STREAM_BATCH = 16


@dataclass
class _Run:
    """One pass of the shared stream of an artifact, for the devices announced into it."""

    sha256: str
    data: bytes
    chunk_size: int
    cursor: StreamCursor
    opened: float
    members: set[str] = field(default_factory=set)
    joined: set[str] = field(default_factory=set)
    started: bool = False
    last: PublishHandle | None = None

    @property
    def streaming(self) -> bool:
        return self.started and not self.cursor.done


@dataclass
class StreamStats:
    """What the pushes cost the host in chunk data: the stream runs and the repairs."""

    runs: int = 0
    stream_chunks: int = 0
    stream_bytes: int = 0
    repair_chunks: int = 0  # chunk messages answered on devices' own topics
    repair_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Session(Pusher):
    """A :class:`Pusher` for one device that shares the fleet pusher's connection."""

    def __init__(self, transport: Transport, job: PushJob, data: bytes, prefix: str, cid: str):
        # no Pusher.__init__: that would open a connection per device
        self.topics = Topics(prefix, job.device)
        self.client_id = cid
        self.reply_topic = self.topics.reply(cid)
        self.transport = transport
        self.progress = None
        self.on_event = None
        self.key: Any | None = None
        self.job = job
        self.data = data
        m = job.signed.manifest
        self.result = PushResult(False, "timeout", None, "no verdict in time", m.sha256, m.release)
        self.chunk_topic = self.topics.chunks(m.sha256)
        self.correlation = b""
        self.started = 0.0
        self.run: _Run | None = None
        self.stats: StreamStats | None = None

    def _wanted(self, need: NeedRequest) -> list[int]:
        run = self.run
        if run is None or not need.stream:
            indexes = need.indexes()
        else:
            run.joined.add(self.job.device)
            indexes = run.cursor.answer(need)  # what is still ahead comes on the stream
        return indexes

    def _serve(self, need: NeedRequest, data: bytes, topic: str, result: PushResult) -> None:
        chunks, sent = result.chunks_sent, result.bytes_sent
        super()._serve(need, data, topic, result)
        if self.stats is not None:
            self.stats.repair_chunks += result.chunks_sent - chunks
            self.stats.repair_bytes += result.bytes_sent - sent

    def handle(self, msg: IncomingMessage) -> bool:
        return self._handle(
            msg,
            self.job.signed.manifest.sha256,
            self.correlation,
            self.data,
            self.chunk_topic,
            self.result,
        )


class FleetPusher:
    """``with FleetPusher(broker) as fp: fp.submit(jobs); while fp.busy: fp.poll(0.2)``."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        prefix: str = "edgeloop",
        gates: Mapping[str, Any] | None = None,
        timeout_s: float = 300.0,
        max_in_flight: int = 500,
        command_expiry_s: int = 300,
        stream: bool = True,
        join_wait_s: float = JOIN_WAIT_S,
        key: Any | None = None,
    ) -> None:
        self.prefix = prefix
        self.key = key  # the host's signing key: a deploy carrying gates is a signed command
        self.gates = gates
        self.timeout_s = timeout_s
        self.max_in_flight = max(1, max_in_flight)
        self.command_expiry_s = command_expiry_s
        self.client_id = new_client_id("fleetpush")
        self.inbox: queue.Queue[IncomingMessage] = queue.Queue()
        topics = host_subscriptions(prefix, kinds=("need", "events"))
        topics.append(f"{prefix}/dev/+/reply/{self.client_id}")
        self.transport = broker.client("fleetpush", topics, self.inbox.put, self.client_id)
        self.queued: deque[PushJob] = deque()
        self.sessions: dict[str, _Session] = {}  # device -> its push in flight
        self.sent: list[tuple[str, str, float]] = []  # (device, sha256, time.time()) announced
        self.stream = stream
        self.join_wait_s = join_wait_s
        self.runs: dict[str, _Run] = {}  # sha256 -> its latest stream run
        self.stats = StreamStats()
        self._data: dict[Path, bytes] = {}

    def __enter__(self) -> FleetPusher:
        connect(self.transport, hint="check --broker HOST:PORT and that the broker runs")
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.stop(final=None)

    # ---- the caller's side ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self.queued or self.sessions)

    def submit(self, jobs: list[PushJob]) -> None:
        """Queue pushes; a device with a push already queued or in flight is refused."""
        for job in jobs:
            if job.device in self.sessions or any(q.device == job.device for q in self.queued):
                raise ValueError(f"{job.device}: a push is already under way")
            self.queued.append(job)

    def cancel(self) -> list[PushJob]:
        """Withdraw every queued push (never announced); those in flight go on."""
        out = list(self.queued)
        self.queued.clear()
        return out

    def poll(self, timeout: float) -> list[tuple[str, PushResult]]:
        """Announce what the in-flight limit allows, handle messages for up to ``timeout``
        seconds (returning early once a verdict is in), and return the verdicts."""
        self._announce()
        done: list[tuple[str, PushResult]] = []
        deadline = time.monotonic() + timeout
        while True:
            streaming = self._stream_turn()
            wait = 0.0 if streaming else min(0.2, deadline - time.monotonic())
            try:
                msg = self.inbox.get(timeout=max(0.0, wait))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                continue
            self._dispatch(msg, done)
            if (done and self.inbox.empty()) or time.monotonic() >= deadline:
                break
        done.extend(self._expired())
        self._announce()
        return done

    # ---- inside ----------------------------------------------------------------------------------
    def _announce(self) -> None:
        deferred: deque[PushJob] = deque()  # their artifact's stream is under way: next run
        while self.queued and len(self.sessions) < self.max_in_flight:
            job = self.queued.popleft()
            data = self._bytes(job.model)
            run = self._run_for(job, data) if self.stream else None
            if self.stream and run is None:
                deferred.append(job)
                continue
            s = _Session(self.transport, job, data, self.prefix, self.client_id)
            s.run, s.stats, s.key = run, self.stats, self.key
            s.correlation = s.announce(
                job.signed,
                gates=self.gates,
                command_expiry_s=self.command_expiry_s,
                wait_s=None,
                stream=run is not None,
            )
            s.started = time.monotonic()
            self.sessions[job.device] = s
            self.sent.append((job.device, job.signed.manifest.sha256, time.time()))
        self.queued.extendleft(reversed(deferred))

    def _bytes(self, model: Path | bytes) -> bytes:
        if isinstance(model, bytes):
            return model
        data = self._data.get(model)
        if data is None:
            data = self._data[model] = model.read_bytes()
        return data

    # ---- the shared stream -----------------------------------------------------------------------
    def _run_for(self, job: PushJob, data: bytes) -> _Run | None:
        """The stream run ``job``'s device joins: the artifact's run not started yet, else a
        new one once the last is over; None while one is under way."""
        m = job.signed.manifest
        run = self.runs.get(m.sha256)
        if run is not None and run.started and not run.cursor.done:
            return None
        if run is None or run.started or run.chunk_size != m.chunk_size:
            run = _Run(m.sha256, data, m.chunk_size, StreamCursor(m.chunk_count), time.monotonic())
            self.runs[m.sha256] = run
            self.stats.runs += 1
        run.members.add(job.device)
        return run

    def _stream_turn(self) -> bool:
        """Publish the next batch of every run that is due; True while any is streaming."""
        busy = False
        for run in self.runs.values():
            if run.cursor.done:
                continue
            if not run.started:
                waiting = {d for d in run.members if d in self.sessions}
                joined = run.joined & waiting
                waited = time.monotonic() - run.opened >= self.join_wait_s
                if not joined or (len(joined) < len(waiting) and not waited):
                    continue
                run.started = True
                log.info("streaming %s to %d devices", run.sha256[:12], len(joined))
            busy = True
            if run.last is not None and not run.last.done():
                continue  # the last batch is not on the socket yet: let the needs through
            cursor = run.cursor
            end = min(cursor.chunk_count, cursor.published + STREAM_BATCH)
            sent = publish_chunks(
                self.transport,
                model_stream_topic(self.prefix, run.sha256),
                run.sha256,
                run.data,
                run.chunk_size,
                range(cursor.published, end),
            )
            cursor.published, run.last = end, sent.last
            self.stats.stream_chunks += sent.chunks
            self.stats.stream_bytes += sent.bytes
        return busy

    def _dispatch(self, msg: IncomingMessage, done: list[tuple[str, PushResult]]) -> None:
        try:
            device = parse_topic(msg.topic, self.prefix).device_id
        except ProtocolError:
            return
        s = self.sessions.get(device)
        if s is None or not s.handle(msg):
            return
        del self.sessions[device]
        s.result.seconds = round(time.monotonic() - s.started, 3)
        done.append((device, s.result))

    def _expired(self) -> list[tuple[str, PushResult]]:
        now = time.monotonic()
        late = [d for d, s in self.sessions.items() if now - s.started > self.timeout_s]
        out = []
        for device in late:
            s = self.sessions.pop(device)
            s.result.seconds = round(now - s.started, 3)
            out.append((device, s.result))
        return out
