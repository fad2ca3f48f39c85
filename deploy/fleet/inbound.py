"""What the host accepts from a device: one message checked before any row is touched.

Both host workers (the loop service's :class:`~deploy.fleet.collector.Collector` and the batched
:class:`~deploy.fleet.ingest.Ingest` behind ``edge-deploy collect``) read device messages
through :func:`read_message`: the topic parsed, the payload capped in size, strict JSON with
bounded nesting, and the fields the registry stores checked for type and range. A message that
fails raises :class:`ProtocolError` and is dropped on its own, so one device's garbage never
fails a batch holding other devices' windows.
"""

from __future__ import annotations

from typing import Any

from agent.errors import ProtocolError
from agent.mqtt.types import IncomingMessage
from agent.wire.codec import (
    MAX_EVENT_BYTES,
    MAX_STATE_BYTES,
    MAX_TELEMETRY_BYTES,
    parse_json_object,
)
from agent.wire.topics import ParsedTopic, parse_topic

_LIMITS = {"state": MAX_STATE_BYTES, "telemetry": MAX_TELEMETRY_BYTES}
_INT64 = 2**63 - 1
TELEMETRY_INTS = ("seq", "inferences", "errors", "throttled", "outbox_dropped", "non_finite")


def check_ints(topic: str, body: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Integers the registry stores must fit its 64-bit columns."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not -_INT64 <= value <= _INT64:
            raise ProtocolError(f"{topic}: {key} {value} does not fit 64 bits")


def check_state(topic: str, body: dict[str, Any]) -> None:
    """The parts of a birth the registry reads have the types it reads them as."""
    hw, rt = body.get("hardware"), body.get("runtime")
    for name, value in (("hardware", hw), ("runtime", rt)):
        if value is not None and not isinstance(value, dict):
            raise ProtocolError(f"{topic}: {name} must be an object or null")
    strings = [("hardware_class", body.get("hardware_class"))]
    strings += [(f"hardware.{k}", (hw or {}).get(k)) for k in ("board_id", "board_family", "board")]
    strings += [(f"runtime.{k}", (rt or {}).get(k)) for k in ("name", "version")]
    for name, value in strings:
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"{topic}: {name} must be a string or null")
    accels = (hw or {}).get("accelerators")
    if accels is not None and (
        not isinstance(accels, list) or not all(isinstance(a, dict) for a in accels)
    ):
        raise ProtocolError(f"{topic}: hardware.accelerators must be a list of objects")


def read_message(
    msg: IncomingMessage, prefix: str, topics: dict[str, ParsedTopic] | None = None
) -> tuple[ParsedTopic, dict[str, Any]]:
    """(topic, body) of one device message; ProtocolError when anything in it is malformed.
    ``topics`` caches parsed topics (parse_topic's own cache holds 256: a fleet has more)."""
    parsed = topics.get(msg.topic) if topics is not None else None
    if parsed is None:
        parsed = parse_topic(msg.topic, prefix)
        if topics is not None:
            topics[msg.topic] = parsed
    limit = _LIMITS.get(parsed.kind, MAX_EVENT_BYTES)
    body = parse_json_object(msg.payload, max_bytes=limit, what=msg.topic) if msg.payload else {}
    if not isinstance(body, dict):
        raise ProtocolError(f"{msg.topic}: payload is not a JSON object")
    if parsed.kind == "state":
        check_state(msg.topic, body)
    elif parsed.kind == "telemetry":
        check_ints(msg.topic, body, TELEMETRY_INTS)
    return parsed, body
