"""MQTT v5 transport of the agent: with agent.mqtt.client_options, the only modules that import
paho.

One network thread (ours, not ``loop_start``) runs paho's external-loop API (``loop_read``,
``loop_write``, ``loop_misc``) so that reconnection, backoff with full jitter and half-open
detection are explicit. That lifecycle needs no paho: it is :class:`ConnectionLoop`
(agent.mqtt.connection), the base of :class:`Transport`. This module holds the paho side: the
client's callbacks, the publish path and the pump; making the client and its properties from
the config is agent.mqtt.client_options'. On every CONNACK the retained birth is queued first,
then the subscriptions are (re)sent, then the caller is told. Paho callbacks only convert and
hand over: ``on_message`` receives our own frozen :class:`IncomingMessage`, never a paho object.
See docs/transport.md for the session settings and why.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.system.lazyimport import defer

# paho imports urllib.request and uses it only with PySocks; it pulls in http.client and email
# (~1.2 MiB of agent RSS). Deferred before paho's import; the imports below are E402 (pyproject).
defer("urllib.request")
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.client_options import (
    connect_properties,
    incoming,
    make_client,
    publish_properties,
)
from agent.mqtt.connection import ConnectionLoop, quickack, set_nodelay
from agent.mqtt.types import (
    NO_MATCHING_SUBSCRIBERS,
    NOT_AUTHORIZED,
    PACKET_TOO_LARGE,
    STOPPED_PAYLOAD,
    IncomingMessage,
    PublishHandle,
    TlsConfig,
    TransportConfig,
    TransportStats,
    WillConfig,
    backoff_delay,
)

__all__ = [
    "NOT_AUTHORIZED",
    "NO_MATCHING_SUBSCRIBERS",
    "PACKET_TOO_LARGE",
    "STOPPED_PAYLOAD",
    "IncomingMessage",
    "PublishHandle",
    "TlsConfig",
    "Transport",
    "TransportConfig",
    "TransportStats",
    "WillConfig",
    "backoff_delay",
]

log = logging.getLogger(__name__)


class _ErrorCapture(logging.Filter):
    """Keeps paho's last ERROR line (e.g. "tlsv1 alert unknown ca") as the transport's error."""

    def __init__(self, transport: Transport) -> None:
        super().__init__()
        self.transport = transport

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.transport._last_error = record.getMessage()
        return True


class Transport(ConnectionLoop):
    """A supervised MQTT v5 connection. ``start()`` returns at once; it (re)connects forever.

    The lifecycle (start, reconnect loop, connection state, stats) is :class:`ConnectionLoop`'s
    (agent.mqtt.connection); this class holds what touches paho."""

    _client: mqtt.Client

    def __init__(
        self,
        config: TransportConfig,
        on_message: Callable[[IncomingMessage], None],
        on_connected: Callable[[bool], None] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._listeners: list[Callable[[bool], None]] = [on_connected] if on_connected else []
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the handle tables, never held while in paho
        self._pending: dict[int, PublishHandle] = {}
        self._early: dict[int, int] = {}
        self._sub_mids: dict[int, list[str]] = {}
        self._extra_subs: dict[str, int] = {}  # subscribe(): kept across reconnects
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # one wake byte in flight at a time: a burst of publishes (a window of chunks) costs
        # one send() instead of two per message; the pump clears this after it drains
        self._wake_pending = False
        self._last_rx = 0.0
        self._n = {"connects": 0, "attempts": 0, "disconnects": 0, "half_open": 0, "subacks": 0}
        self._last_connack: int | None = None
        self._last_disconnect: int | None = None
        self._last_error: str | None = None
        self._delays: list[float] = []
        self._attempt = 0
        self._max_packet: int | None = config.max_packet_bytes
        self._suback: dict[str, int] = {}
        self._error_capture = _ErrorCapture(self)
        self._client = self._make_client()

    # ----- public API -------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        message_expiry_interval: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
    ) -> PublishHandle:
        """Publish while connected; offline, the handle fails at once (``error="offline"``).

        Durable delivery is the outbox's job; this never queues unboundedly in memory.
        """
        if not self._connected.is_set():
            handle = PublishHandle(None, qos)
            handle._resolve(None, "offline")
            return handle
        props = publish_properties(
            response_topic=response_topic,
            correlation_data=correlation_data,
            message_expiry_interval=message_expiry_interval,
            user_properties=user_properties,
            content_type=content_type,
        )
        return self._publish(topic, payload, qos, retain, props)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe to one more filter now (if connected) and on every later connect, until
        :meth:`unsubscribe` (the agent follows a shared model stream while it downloads)."""
        with self._lock:
            self._extra_subs[topic] = qos
        if self._connected.is_set():
            self._send_subscribe([(topic, qos)])

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            known = self._extra_subs.pop(topic, None) is not None
        if known and self._connected.is_set():
            self._client.unsubscribe(topic)
            self._wake()

    def _send_subscribe(self, subs: list[tuple[str, int]]) -> None:
        _rc, mid = self._client.subscribe(subs)
        if mid is not None:
            with self._lock:
                self._sub_mids[mid] = [t for t, _q in subs]
        self._wake()

    def ack(self, mid: int, qos: int) -> None:
        """With ``manual_ack``: acknowledge a received message (after it is safely stored)."""
        if qos > 0:
            self._client.ack(mid, qos)

    def stop(self, timeout: float = 5.0, final: tuple[str, bytes] | None = None) -> None:
        """Clean stop: retained "stopped" state (PUBACK awaited), then a normal DISCONNECT.

        ``final`` defaults to the will topic with ``{"online": false, "reason": "stopped"}``.
        A normal DISCONNECT (reason 0) tells the broker not to publish the will.
        """
        if final is None and self.config.will is not None:
            final = (self.config.will.topic, STOPPED_PAYLOAD)
        deadline = time.monotonic() + timeout
        if final is not None and self._connected.is_set():
            handle = self._publish(final[0], final[1], 1, True, None)
            if not handle.wait(max(0.0, deadline - time.monotonic())):
                log.warning("the stopped state was not acknowledged within %.1fs", timeout)
        self._stop.set()  # the network thread sends DISCONNECT (reason 0) and exits
        self._wake()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("MQTT network thread did not exit within %.1fs", timeout)
            self._thread = None
        self._set_connected(False)
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for handle in pending:
            handle._resolve(None, "stopped")
        self._wake_r.close()
        self._wake_w.close()
        logging.getLogger(f"{__name__}.paho.{self.config.client_id}").removeFilter(
            self._error_capture
        )

    # ----- paho setup and callbacks (network thread) ------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        paho_log = logging.getLogger(f"{__name__}.paho.{cfg.client_id}")
        paho_log.addFilter(self._error_capture)  # paho reports TLS/socket errors only by log
        client = make_client(cfg, paho_log)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_paho_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = set_nodelay
        # With a write callback registered, paho never writes from the publishing thread:
        # it only wakes our select(), so the network thread is the one that touches the socket.
        client.on_socket_register_write = lambda _c, _u, _s: self._wake()
        client.connect_async(
            cfg.host,
            cfg.port,
            cfg.keepalive,
            clean_start=cfg.clean_start,
            properties=connect_properties(cfg),
        )
        return client

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._last_connack = rc.value
        if rc.is_failure:
            self._last_error = f"CONNACK refused: {rc} ({rc.value:#04x})"
            log.warning(
                "broker %s:%s refused the connection: %s", self.config.host, self.config.port, rc
            )
            return
        self._n["connects"] += 1
        self._last_error = None
        limits = [
            x
            for x in (self.config.max_packet_bytes, getattr(props, "MaximumPacketSize", None))
            if x
        ]
        self._max_packet = min(limits) if limits else None
        self._attempt = 0
        # SUBSCRIBE before the birth: the broker handles one connection's packets in order, so
        # whoever sees the birth and sends a command can count on the subscription being there.
        with self._lock:
            subs = list(self.config.subscriptions) + list(self._extra_subs.items())
        if subs:
            self._send_subscribe(subs)
        if self.config.birth is not None:
            try:
                topic, payload = self.config.birth()
                self._publish(topic, payload, 1, True, None)
            except Exception:
                log.exception("building the birth message failed; connected without birth")
        log.info(
            "connected to %s:%s (session present: %s)",
            self.config.host,
            self.config.port,
            flags.session_present,
        )
        self._set_connected(True)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._last_disconnect = rc.value
        with self._lock:  # QoS 0 packets not yet written are gone; QoS 1 ones paho re-sends
            lost = [h for h in self._pending.values() if h.qos == 0]
            for h in lost:
                self._pending.pop(h.mid or 0, None)
        for h in lost:
            h._resolve(None, "connection lost")
        if self._connected.is_set():
            self._n["disconnects"] += 1
            log.log(
                logging.INFO if self._stop.is_set() else logging.WARNING,
                "disconnected from %s:%s: %s",
                self.config.host,
                self.config.port,
                rc,
            )
        self._set_connected(False)

    def _on_paho_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(incoming(msg))
        except Exception:
            log.exception("on_message handler failed for %s", msg.topic)

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            handle = self._pending.pop(mid, None)
            if handle is None:
                self._early[mid] = rc.value
        if handle is not None:
            self._finish(handle, rc.value)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._lock:
            topics = self._sub_mids.pop(mid, [])
        self._n["subacks"] += 1
        for topic, rc in zip(topics, rcs, strict=False):
            self._suback[topic] = rc.value
            if rc.is_failure:
                log.warning("subscription to %s refused: %s (%#04x)", topic, rc, rc.value)

    # ----- internals --------------------------------------------------------------------
    def _publish(
        self, topic: str, payload: bytes | str, qos: int, retain: bool, props: Properties | None
    ) -> PublishHandle:
        limit = self._max_packet
        if limit is not None:
            data = payload.encode() if isinstance(payload, str) else payload
            props_len = len(props.pack()) if props else 1  # type: ignore[no-untyped-call]
            size = 9 + len(topic.encode()) + len(data) + props_len
            if size > limit:
                # Refused here: Mosquitto 2.0 answers an oversize PUBLISH with a DISCONNECT or a
                # PUBACK 0x95 paho cannot decode, and paho would re-send it on every reconnect.
                handle = PublishHandle(None, qos)
                handle._resolve(PACKET_TOO_LARGE, f"packet of {size} bytes > limit {limit}")
                log.warning("not publishing %s: %s", topic, handle.error)
                return handle
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        handle = PublishHandle(info.mid, qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN) or (
            qos == 0 and info.rc == mqtt.MQTT_ERR_NO_CONN
        ):
            handle._resolve(None, mqtt.error_string(info.rc))
            return handle
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = handle
        if early is not None:
            self._finish(handle, early)
        self._wake()
        return handle

    def _finish(self, handle: PublishHandle, reason: int) -> None:
        if reason >= 0x80:
            log.warning("broker refused publish mid %s: reason %#04x", handle.mid, reason)
        handle._resolve(reason)

    def _pump(self) -> None:
        """Serve the socket until the connection is gone (or a clean stop completed)."""
        client = self._client
        tick = max(0.05, min(1.0, client.keepalive / 8))
        disconnecting = False
        next_misc = 0.0  # keepalive and half-open checks: every 20 ms is plenty, not every read
        while True:
            if self._stop.is_set() and not disconnecting:
                disconnecting = True
                client.disconnect()
            sock = client.socket()
            if sock is None:
                return
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            wlist = [sock] if client.want_write() else []
            try:
                readable, _w, _x = select.select(
                    [sock, self._wake_r], wlist, [], 0.0 if pending else tick
                )
            except (OSError, ValueError):
                readable = []
            if self._wake_r in readable:
                self._drain_wake()  # before want_write() below
            rc = mqtt.MQTT_ERR_SUCCESS
            if sock in readable or pending:
                self._last_rx = time.monotonic()
                rc = client.loop_read()
                quickack(sock)
            if rc == mqtt.MQTT_ERR_SUCCESS and client.socket() is not None and client.want_write():
                rc = client.loop_write()
            now = time.monotonic()
            if rc == mqtt.MQTT_ERR_SUCCESS and client.socket() is not None and now >= next_misc:
                next_misc = now + 0.02
                rc = client.loop_misc()
                self._check_half_open(client)
            if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
                return
