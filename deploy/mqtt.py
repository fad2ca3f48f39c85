"""The host's MQTT side: a broker address and the one place a host client is made and connected.

Every host worker (push, collector, fleet view, the loop's deployer) gets its MQTT v5 client from
:meth:`BrokerAddress.client` and connects it with :func:`connect`, so host connection options
(credentials, session, TLS) live here only. The client is the agent's
:class:`~agent.mqtt.transport.Transport` (the agent's paho side) with a clean session.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from agent.errors import EdgeloopError
from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, TlsConfig, TransportConfig

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None  # CA, client certificate and key (edge-deploy provision --host)

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise EdgeloopError(f"broker {text!r}: expected HOST:PORT", code="config")
        return cls(host, int(port))

    def with_credentials(self, username: str | None, password: str | None) -> BrokerAddress:
        return replace(self, username=username, password=password)

    def with_tls(self, tls: TlsConfig | None) -> BrokerAddress:
        return replace(self, tls=tls)

    def client(
        self,
        role: str,
        subscriptions: Sequence[str],
        on_message: Callable[[IncomingMessage], None],
        client_id: str | None = None,
        *,
        session_expiry_s: int = 0,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
    ) -> Transport:
        """A host-side MQTT v5 client. By default a clean session (a host tool keeps no broker
        state); an ingest worker keeps a persistent one (``session_expiry_s``) and acknowledges
        each message itself after it is committed (``manual_ack``)."""
        return Transport(
            TransportConfig(
                host=self.host,
                port=self.port,
                client_id=client_id or new_client_id(role),
                username=self.username,
                password=self.password,
                tls=self.tls,
                clean_start=session_expiry_s == 0,
                session_expiry_s=session_expiry_s,
                subscriptions=[(t, 1) for t in subscriptions],
                manual_ack=manual_ack,
                receive_maximum=receive_maximum,
            ),
            on_message,
        )


def new_client_id(role: str) -> str:
    return f"edgeloop-{role}-{uuid.uuid4().hex[:12]}"


def connect(
    transport: Transport,
    message: str = "cannot connect to the broker",
    hint: str | None = None,
) -> None:
    """Start the client and wait for the broker's CONNACK; stops it and raises if none comes."""
    transport.start()
    if not transport.wait_connected(CONNECT_TIMEOUT_S):
        transport.stop(final=None)
        raise EdgeloopError(message, hint=hint, code="broker")
