"""The supervised connection under the transport, without paho: the network thread's start, the
reconnect loop with backoff (full jitter), half-open detection, the connection state and its
listeners, the wake pipe, the counters (``stats``) and the socket options.

:class:`ConnectionLoop` is the base of agent.mqtt.transport.Transport, whose ``__init__`` sets the
fields declared here and which adds what touches paho: the client and its callbacks, the publish
path and the pump (``_pump``, paho's read/write/misc loop). This module imports no paho: it drives
the client only through :class:`MqttClient`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.mqtt.types import TransportConfig, TransportStats, backoff_delay

log = logging.getLogger("agent.mqtt.transport")  # the transport's lines keep their name


def set_nodelay(_c: Any, _u: Any, sock: Any) -> None:
    """No Nagle: a small reply must not wait for the ACK of our last PUBACK (delayed ACK
    holds that ~40 ms on Linux; two such waits made an inference round trip ~88 ms)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def quickack(sock: Any) -> None:
    """ACK what we just read at once. Mosquitto leaves Nagle on by default (set_tcp_nodelay
    false): its next small packet to us (a need request after our chunks' PUBACKs, the next
    request after our reply's PUBACK) waits for our ACK, which Linux delays ~40 ms. The flag
    is not sticky, hence after every read."""
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class MqttClient(Protocol):
    """What the connection loop calls on the MQTT client (paho's, built by the transport)."""

    @property
    def keepalive(self) -> int: ...
    def reconnect(self) -> object: ...
    def socket(self) -> object: ...
    def loop_read(self) -> object: ...


class ConnectionLoop:
    """The network thread's lifecycle and the connection state (fields set by Transport)."""

    config: TransportConfig
    _client: MqttClient
    _rng: random.Random
    _stop: threading.Event
    _connected: threading.Event
    _thread: threading.Thread | None
    _listeners: list[Callable[[bool], None]]
    _wake_r: socket.socket
    _wake_w: socket.socket
    _wake_pending: bool
    _last_rx: float
    _n: dict[str, int]
    _last_connack: int | None
    _last_disconnect: int | None
    _last_error: str | None
    _delays: list[float]
    _attempt: int
    _suback: dict[str, int]

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mqtt-transport", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """False once the network thread has died (never started counts as running: the
        watchdog then only watches the other loops)."""
        return self._thread is None or self._thread.is_alive()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def add_connection_listener(self, fn: Callable[[bool], None]) -> None:
        """Also call ``fn(up)`` on every connect/disconnect (network thread: only enqueue)."""
        self._listeners.append(fn)

    def stats(self) -> TransportStats:
        return TransportStats(
            connected=self.connected,
            connects=self._n["connects"],
            attempts=self._n["attempts"],
            disconnects=self._n["disconnects"],
            half_open_detected=self._n["half_open"],
            last_connack_reason=self._last_connack,
            last_disconnect_reason=self._last_disconnect,
            last_error=self._last_error,
            backoff_delays_s=tuple(self._delays[-50:]),
            subacks=self._n["subacks"],
            suback_reasons=dict(self._suback),
        )

    def _set_connected(self, up: bool) -> None:
        if up == self._connected.is_set():
            return
        (self._connected.set if up else self._connected.clear)()
        for fn in list(self._listeners):
            try:
                fn(up)
            except Exception:
                log.exception("connection listener failed")

    def _wake(self) -> None:
        if self._wake_pending:
            return  # a byte is already on its way: the pump checks want_write after draining
        self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            self._wake_pending = False  # closed (stopping) or full: nothing is on its way

    def _drain_wake(self) -> None:
        """Consume the wake byte(s), then allow the next wake. Called before the pump looks at
        want_write(): a publish that found the flag still set had queued its packet before
        looking, so that look sees it; any publish after this sends a new byte."""
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        self._wake_pending = False

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._connect_once():
                self._pump()
            if self._stop.is_set():
                break
            delay = backoff_delay(
                self._attempt, self.config.reconnect_min_s, self.config.reconnect_max_s, self._rng
            )
            self._attempt += 1
            self._delays.append(delay)
            del self._delays[:-50]
            self._stop.wait(delay)

    def _connect_once(self) -> bool:
        self._n["attempts"] += 1
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:
            self._last_error = f"connect to {self.config.host}:{self.config.port} failed: {exc}"
            log.debug("%s", self._last_error)
            return False
        self._last_rx = time.monotonic()
        return True

    def _pump(self) -> None:
        """Serve the socket until the connection is gone: paho's loop, in the transport."""
        raise NotImplementedError

    def _check_half_open(self, client: MqttClient) -> None:
        """Paho alone notices a frozen broker only after up to 2 x keepalive; we bound it."""
        limit = client.keepalive * self.config.dead_after_keepalives
        if client.keepalive <= 0 or time.monotonic() - self._last_rx <= limit:
            return
        sock = client.socket()
        if sock is None:
            return
        self._n["half_open"] += 1
        self._last_error = f"no byte from the broker for {limit:.1f}s (half-open connection)"
        log.warning("%s; reconnecting", self._last_error)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        client.loop_read()  # reads EOF: paho closes the socket and reports the disconnect
