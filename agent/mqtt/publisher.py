"""What the device sends: events (through the durable outbox), install progress, command
replies, chunk requests and the retained state/birth message.

One-way outputs of the core thread: the installer (agent.delivery.install) and the command verbs
(agent.commands) hand their messages here instead of calling back into the service.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from agent.mqtt.outbox import Outbox
from agent.mqtt.transport import Transport
from agent.serving.server import JSON_CONTENT_TYPE
from agent.wire.chunks import compact_ranges
from agent.wire.messages import CommandReply, Event, EventKind, NeedRequest, ReplyTo, State
from agent.wire.topics import Topics


class Publisher:
    def __init__(self, outbox: Outbox, topics: Topics) -> None:
        self.outbox = outbox
        self.topics = topics
        self.transport: Transport | None = None  # attached once built (it needs birth_message)
        self._birth = b""
        self._birth_lock = threading.Lock()

    def _transport(self) -> Transport:
        assert self.transport is not None, "Publisher.transport is attached at start-up"
        return self.transport

    def event(self, kind: str, code: str = "ok", message: str = "", **data: Any) -> None:
        body = {k: v for k, v in data.items() if v is not None}
        ts = round(time.time(), 3)
        # seq = the outbox's durable sequence number: one gapless series per device across
        # events and telemetry, monotonic across restarts (the host dedups by device + seq).
        self.outbox.append(
            self.topics.events, lambda seq: Event(kind, code, message, body, ts, seq).to_json()
        )

    def disk_full(self, full: bool) -> None:
        """The state disk filled (or has room again): the outbox cannot take this event, so it
        goes out directly, with what the outbox reports and what to do."""
        message = "the state disk is full" if full else "the state disk has space again"
        report = self.outbox.disk_report() or {}
        ev = Event(EventKind.DISK_FULL, "disk_full" if full else "ok", message, report)
        self._transport().publish(self.topics.events, ev.to_json(), qos=1)

    def progress(self, data: dict[str, Any]) -> None:
        ev = Event(EventKind.INSTALL_PROGRESS, "ok", "", data, ts=round(time.time(), 3))
        self._transport().publish(self.topics.events, ev.to_json(), qos=0)

    def reply(
        self,
        to: ReplyTo | None,
        status: str,
        code: str | None = None,
        message: str = "",
        **data: Any,
    ) -> None:
        if to is None or not to.topic:
            return
        code = str(code) if code else None
        body = CommandReply(to.cmd_id, to.verb, str(status), code, message, data)
        self._transport().publish(
            to.topic,
            body.to_json(),
            qos=1,
            correlation_data=to.correlation,
            content_type=JSON_CONTENT_TYPE,
        )

    def request_chunks(self, sha256: str, indexes: list[int], *, stream: bool = False) -> None:
        need = NeedRequest.from_ranges(sha256, compact_ranges(indexes), stream=stream)
        self._transport().publish(self.topics.need, need.to_json(), qos=1)

    def follow_stream(self, sha256: str, on: bool) -> None:
        """Subscribe to (or leave) the shared chunk stream of ``sha256``; the subscription is
        sent before any later need, so the host's stream cannot outrun it."""
        topic = self.topics.model_stream(sha256)
        if on:
            self._transport().subscribe(topic, qos=0)
        else:
            self._transport().unsubscribe(topic)

    def publish_state(self, state: State) -> None:
        """Keep ``state`` as the birth message and publish it retained when connected."""
        with self._birth_lock:
            self._birth = payload = state.to_json()
        transport = self._transport()
        if transport.connected:
            transport.publish(self.topics.state, payload, qos=1, retain=True)

    def birth_message(self) -> tuple[str, bytes]:
        with self._birth_lock:
            return self.topics.state, self._birth
