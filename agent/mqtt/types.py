"""Types of the MQTT transport, free of paho: configs, incoming messages, publish handles.

Kept apart from agent/mqtt/transport.py so the core and tests can use them without importing paho.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import BrokerConfig

log = logging.getLogger(__name__)

STOPPED_PAYLOAD = b'{"online": false, "reason": "stopped"}'
#: PUBACK reason codes worth naming. Anything below 0x80 is success (0x10: no subscribers).
NO_MATCHING_SUBSCRIBERS = 0x10
NOT_AUTHORIZED = 0x87
PACKET_TOO_LARGE = 0x95


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip server hostname check (never for production)


@dataclass(frozen=True)
class WillConfig:
    topic: str
    payload: bytes = b'{"online": false}'
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class TransportConfig:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    keepalive: int = 30
    session_expiry_s: int = 3600
    clean_start: bool = False
    will: WillConfig | None = None
    birth: Callable[[], tuple[str, bytes]] | None = None
    subscriptions: Sequence[tuple[str, int]] = ()
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    connect_timeout_s: float = 5.0
    #: Refuse (handle reason 0x95) publishes bigger than this or than the broker's CONNACK
    #: Maximum Packet Size, whichever is smaller. None: only the broker's limit.
    max_packet_bytes: int | None = None
    #: Declare the broker dead after this many keepalives without a byte from it (< 1.5).
    dead_after_keepalives: float = 1.25
    #: Acknowledge received QoS 1 messages only through Transport.ack() (a host worker acks
    #: once the message is committed), and the MQTT5 Receive Maximum: how many unacknowledged
    #: messages the broker may have in flight to us (None: the broker's default).
    manual_ack: bool = False
    receive_maximum: int | None = None

    @classmethod
    def for_device(
        cls,
        b: BrokerConfig,
        device_id: str,
        *,
        will_topic: str,
        birth: Callable[[], tuple[str, bytes]],
        subscriptions: Sequence[str],
    ) -> TransportConfig:
        """The agent's connection: persistent session, retained will, QoS 1 subscriptions."""
        return cls(
            host=b.host,
            port=b.port,
            client_id=f"edgeloop-{device_id}",
            username=b.username or None,
            password=b.password or None,
            tls=TlsConfig(b.tls_ca, b.tls_cert, b.tls_key) if b.tls_ca else None,
            keepalive=b.keepalive_s,
            session_expiry_s=b.session_expiry_s,
            clean_start=False,
            will=WillConfig(will_topic),
            birth=birth,
            subscriptions=[(f, 1) for f in subscriptions],
            reconnect_min_s=b.reconnect_min_s,
            reconnect_max_s=b.reconnect_max_s,
        )


@dataclass(frozen=True)
class IncomingMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry_interval: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    mid: int = 0  # the packet id, for Transport.ack() with manual_ack

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "payload_bytes": len(self.payload),
            "qos": self.qos,
            "retain": self.retain,
            "response_topic": self.response_topic,
            "correlation_data": self.correlation_data.hex() if self.correlation_data else None,
            "message_expiry_interval": self.message_expiry_interval,
            "user_properties": [list(p) for p in self.user_properties],
            "content_type": self.content_type,
        }


@dataclass(frozen=True)
class TransportStats:
    connected: bool
    connects: int
    attempts: int
    disconnects: int
    half_open_detected: int
    last_connack_reason: int | None
    last_disconnect_reason: int | None
    last_error: str | None
    backoff_delays_s: tuple[float, ...]
    subacks: int = 0
    suback_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["backoff_delays_s"] = list(self.backoff_delays_s)
        return out


class PublishHandle:
    """Completion of one publish: PUBACK (QoS 1), socket write (QoS 0), or never (lost)."""

    def __init__(self, mid: int | None, qos: int) -> None:
        self.mid = mid
        self.qos = qos
        self.reason_code: int | None = None  # MQTT5 PUBACK reason code once acknowledged
        self.error: str | None = None  # set when it will never be acknowledged
        self._is_done = False
        self._callbacks: list[Callable[[PublishHandle], None]] = []
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None  # made by the first wait() (most never do)

    def done(self) -> bool:
        return self._is_done

    @property
    def ok(self) -> bool:
        """Acknowledged with a success code (0x00, or 0x10 "no matching subscribers")."""
        return self.reason_code is not None and self.reason_code < 0x80

    def wait(self, timeout: float | None = None) -> bool:
        """Block until acknowledged or failed; True when done within ``timeout``."""
        with self._lock:
            if self._is_done:
                return True
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            return self._cond.wait_for(lambda: self._is_done, timeout)

    def add_done_callback(self, fn: Callable[[PublishHandle], None]) -> None:
        """Call ``fn(handle)`` once done (on the network thread: only enqueue there)."""
        with self._lock:
            if not self._is_done:
                self._callbacks.append(fn)
                return
        fn(self)

    def _resolve(self, reason_code: int | None, error: str | None = None) -> None:
        with self._lock:
            if self._is_done:
                return
            self.reason_code, self.error = reason_code, error
            self._is_done = True
            if self._cond is not None:
                self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("publish done-callback failed (mid %s)", self.mid)

    def __repr__(self) -> str:
        return f"PublishHandle(mid={self.mid}, reason={self.reason_code}, error={self.error})"


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, min * 2**attempt))."""
    cap = min(max_s, min_s * (2 ** min(attempt, 30)))
    return rng.uniform(0.0, cap)
