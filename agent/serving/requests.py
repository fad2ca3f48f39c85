"""Inference requests on ``{p}/dev/{id}/infer``: size check, decode, queue, reply.

The reply goes to the request's MQTT5 response topic with its correlation data, in the
inference format (``{"ok": false, "code", "message"}`` on refusal; the result, JSON or .npy,
from the inference worker otherwise). Runs on the agent's core thread (agent.service).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from agent.errors import EdgeloopError, ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.serving.server import JSON_CONTENT_TYPE, InferenceJob, Server, decode_request
from agent.wire.reasons import Reason


class Publish(Protocol):
    def __call__(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        correlation_data: bytes | None,
        content_type: str | None,
    ) -> Any: ...


def handle_infer(
    server: Server | None, msg: IncomingMessage, max_bytes: int, publish: Publish
) -> EdgeloopError | None:
    """Answer or queue one request; returns the input error to report as an event, if any."""
    to, corr = msg.response_topic, msg.correlation_data

    def reply(body: dict[str, Any] | None, raw: bytes | None, ctype: str) -> None:
        if not to:
            return
        payload = raw if raw is not None else json.dumps(body).encode()
        publish(to, payload, qos=1, correlation_data=corr, content_type=ctype)

    def refuse(code: str, message: str) -> None:
        reply({"ok": False, "code": code, "message": message}, None, JSON_CONTENT_TYPE)

    if server is None:
        refuse("no_model", "no model installed")
        return None
    try:
        if len(msg.payload) > max_bytes:
            raise ProtocolError(
                f"inference request of {len(msg.payload)} bytes exceeds {max_bytes} bytes",
                code=Reason.TOO_LARGE,
                hint="raise limits.max_payload_kb or send a smaller .npy",
            )
        inputs, as_npy = decode_request(msg.payload, msg.content_type)
    except EdgeloopError as exc:  # reply in the inference format; the caller sends the event
        reply({"ok": False, **exc.to_dict()}, None, JSON_CONTENT_TYPE)
        return exc
    if not server.submit(InferenceJob(inputs, reply, as_npy)):
        refuse(Reason.BUSY, "inference queue full")
    return None
