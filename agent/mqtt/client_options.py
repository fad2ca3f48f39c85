"""The paho side of :class:`~agent.mqtt.transport.Transport` that is plain option building: the
paho client made from a :class:`TransportConfig` (logger, credentials, TLS, will), the CONNECT
and PUBLISH properties, and paho's received message turned into our frozen
:class:`IncomingMessage`. No state and no callbacks: those stay with the transport.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any

from agent.system.lazyimport import defer

# As in agent.mqtt.transport: urllib.request deferred before paho's import (E402, pyproject).
defer("urllib.request")
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.types import IncomingMessage, TransportConfig


def properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def publish_properties(
    *,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
    message_expiry_interval: int | None = None,
    user_properties: Sequence[tuple[str, str]] = (),
    content_type: str | None = None,
) -> Properties | None:
    """The PUBLISH properties; None when there are none at all (the common case: chunks,
    telemetry), which paho packs fastest."""
    if (
        response_topic is None
        and correlation_data is None
        and not user_properties
        and message_expiry_interval is None
        and content_type is None
    ):
        return None
    props = properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    if message_expiry_interval is not None:
        props.MessageExpiryInterval = message_expiry_interval
    if user_properties:
        props.UserProperty = list(user_properties)
    if content_type is not None:
        props.ContentType = content_type
    return props


def connect_properties(cfg: TransportConfig) -> Properties:
    props = properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = cfg.session_expiry_s
    if cfg.receive_maximum is not None:
        props.ReceiveMaximum = cfg.receive_maximum
    return props


def make_client(cfg: TransportConfig, paho_log: logging.Logger) -> mqtt.Client:
    """A paho MQTT v5 client with ``cfg``'s identity, credentials, TLS and will, logging to
    ``paho_log``; no callbacks yet, not connecting yet."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=cfg.manual_ack,
    )
    client.enable_logger(paho_log)
    client.connect_timeout = cfg.connect_timeout_s
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls is not None:
        client.tls_set(
            ca_certs=cfg.tls.ca_file,
            certfile=cfg.tls.cert_file,
            keyfile=cfg.tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.tls_insecure_set(cfg.tls.insecure)
    if cfg.will is not None:
        w = cfg.will
        client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
    return client


def incoming(msg: mqtt.MQTTMessage) -> IncomingMessage:
    props = getattr(msg, "properties", None)

    def prop(name: str) -> Any:
        return getattr(props, name, None) if props is not None else None

    corr = prop("CorrelationData")
    users = prop("UserProperty") or []
    return IncomingMessage(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=int(msg.qos),
        retain=bool(msg.retain),
        response_topic=prop("ResponseTopic"),
        correlation_data=bytes(corr) if corr is not None else None,
        message_expiry_interval=prop("MessageExpiryInterval"),
        user_properties=tuple((str(k), str(v)) for k, v in users),
        content_type=prop("ContentType"),
        mid=int(msg.mid),
    )
