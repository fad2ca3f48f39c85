"""Topics: the one place that knows the prefix, device ids, verbs and the host's filters."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

from agent.errors import ProtocolError
from agent.wire.reasons import Reason

DEFAULT_PREFIX = "edgeloop"

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_ID_RE = re.compile(ID_PATTERN)
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_VERB_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")

VERBS = frozenset({"deploy", "rollback", "bench", "config", "rebirth", "state"})


def valid_id(value: object) -> bool:
    """Device ids and model names: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` (no path separators, no
    leading dot, no MQTT wildcards)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def valid_sha256(value: object) -> bool:
    """Lower-case hex SHA-256, 64 characters."""
    return isinstance(value, str) and _SHA_RE.fullmatch(value) is not None


def check_prefix(prefix: str) -> str:
    levels = prefix.split("/")
    if not prefix or any(not lv or lv in ("+", "#") or "+" in lv or "#" in lv for lv in levels):
        raise ProtocolError(
            f"topic prefix {prefix!r} is invalid",
            code=Reason.BAD_TOPIC,
            hint="use non-empty levels without '+' or '#', for example 'edgeloop' or 'acme/edge'",
        )
    if prefix.startswith("$") or "\x00" in prefix:
        raise ProtocolError(f"topic prefix {prefix!r} may not start with '$'", code="bad_topic")
    return prefix


class ParsedTopic(NamedTuple):
    device_id: str
    kind: str  # "state" | "telemetry" | "events" | "cmd" | "chunks" | "need" | "infer" | "reply"
    arg: str | None  # the verb for "cmd", the sha256 for "chunks", the client id for "reply"


_SIMPLE_KINDS = frozenset({"state", "telemetry", "events", "need", "infer"})


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> ParsedTopic:
    """Split ``{prefix}/dev/{id}/{kind}[/{arg}]``; raises ProtocolError("bad_topic")."""
    if isinstance(topic, str) and isinstance(prefix, str):
        return _parse_topic(topic, prefix)  # the same few topics, thousands of times a second
    return _parse_topic.__wrapped__(topic, prefix)


@functools.lru_cache(maxsize=256)
def _parse_topic(topic: str, prefix: str) -> ParsedTopic:
    base = check_prefix(prefix) + "/dev/"
    if not isinstance(topic, str) or not topic.startswith(base):
        raise ProtocolError(f"topic {topic!r} is not under {base}", code=Reason.BAD_TOPIC)
    parts = topic[len(base) :].split("/")
    device_id, kind, rest = parts[0], (parts[1] if len(parts) > 1 else ""), parts[2:]
    if not valid_id(device_id):
        raise ProtocolError(f"device id {device_id!r} is invalid", code=Reason.BAD_TOPIC)
    if kind in _SIMPLE_KINDS and not rest:
        return ParsedTopic(device_id, kind, None)
    if kind == "cmd" and len(rest) == 1 and _VERB_RE.fullmatch(rest[0]):
        return ParsedTopic(device_id, kind, rest[0])
    if kind == "chunks" and len(rest) == 1 and valid_sha256(rest[0]):
        return ParsedTopic(device_id, kind, rest[0])
    if kind == "reply" and len(rest) == 1 and valid_id(rest[0]):
        return ParsedTopic(device_id, kind, rest[0])
    raise ProtocolError(f"topic {topic!r} is not an edgeloop topic", code=Reason.BAD_TOPIC)


@dataclass(frozen=True)
class Topics:
    """Topic names for one device; the only code that builds topic strings."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not valid_id(self.device_id):
            raise ProtocolError(
                f"device id {self.device_id!r} is invalid",
                code=Reason.BAD_TOPIC,
                hint="use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit",
            )

    @property
    def base(self) -> str:
        return f"{self.prefix}/dev/{self.device_id}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def need(self) -> str:
        return f"{self.base}/need"

    @property
    def infer(self) -> str:
        return f"{self.base}/infer"

    def cmd(self, verb: str) -> str:
        if not _VERB_RE.fullmatch(verb):
            raise ProtocolError(f"command verb {verb!r} is invalid", code=Reason.UNKNOWN_VERB)
        return f"{self.base}/cmd/{verb}"

    def chunks(self, sha256: str) -> str:
        if not valid_sha256(sha256):
            raise ProtocolError(f"{sha256!r} is not a sha256 hex digest", code=Reason.BAD_TOPIC)
        return f"{self.base}/chunks/{sha256}"

    def model_stream(self, sha256: str) -> str:
        """The shared chunk stream of one artifact (:func:`model_stream_topic`)."""
        return model_stream_topic(self.prefix, sha256)

    def stream_sha(self, topic: str) -> str | None:
        """The sha256 of a shared-stream topic under this prefix, None for any other topic."""
        head, tail = f"{self.prefix}/models/", "/chunks"
        if topic.startswith(head) and topic.endswith(tail):
            sha = topic[len(head) : -len(tail)]
            return sha if valid_sha256(sha) else None
        return None

    def reply(self, client_id: str) -> str:
        """The response topic a host client names in its commands to this device: under the
        device's own tree, so an ACL bound to the device (``{p}/dev/%u/reply/#``) lets the
        device answer and nobody else."""
        if not valid_id(client_id):
            raise ProtocolError(f"client id {client_id!r} is invalid", code=Reason.BAD_TOPIC)
        return f"{self.base}/reply/{client_id}"

    def device_subscriptions(self) -> list[str]:
        """Topic filters the agent subscribes to."""
        return [f"{self.base}/cmd/+", f"{self.base}/chunks/+", self.infer]

    def parse(self, topic: str) -> ParsedTopic:
        """parse_topic() that also insists the topic belongs to this device."""
        parsed = parse_topic(topic, self.prefix)
        if parsed.device_id != self.device_id:
            raise ProtocolError(f"topic {topic!r} is for another device", code=Reason.BAD_TOPIC)
        return parsed


def model_stream_topic(prefix: str, sha256: str) -> str:
    """``{p}/models/{sha256}/chunks``: one artifact's chunks, published once per wave by the host
    for every device installing it (same framing as ``{p}/dev/{id}/chunks/{sha256}``). Devices
    subscribe while they download that sha256 and repair what they missed through ``need``."""
    check_prefix(prefix)
    if not valid_sha256(sha256):
        raise ProtocolError(f"{sha256!r} is not a sha256 hex digest", code=Reason.BAD_TOPIC)
    return f"{prefix}/models/{sha256}/chunks"


def host_reply_filter(prefix: str, client_id: str) -> str:
    """The replies of every device to host client ``client_id`` (``Topics.reply`` of each)."""
    check_prefix(prefix)
    if not valid_id(client_id):
        raise ProtocolError(f"client id {client_id!r} is invalid", code=Reason.BAD_TOPIC)
    return f"{prefix}/dev/+/reply/{client_id}"


HOST_KINDS = ("state", "telemetry", "events", "need")
FLEET_KINDS = ("state", "telemetry", "events")  # what the collector and the fleet view read


def host_subscriptions(
    prefix: str = DEFAULT_PREFIX,
    share_group: str | None = None,
    kinds: tuple[str, ...] = HOST_KINDS,
) -> list[str]:
    """Topic filters a host worker subscribes to (all devices); with ``share_group`` they are
    MQTT5 shared subscriptions ``$share/{group}/...`` so several workers split the load."""
    check_prefix(prefix)
    filters = [f"{prefix}/dev/+/{kind}" for kind in kinds]
    if share_group is not None:
        if not valid_id(share_group):
            raise ProtocolError(f"share group {share_group!r} is invalid", code=Reason.BAD_TOPIC)
        filters = [f"$share/{share_group}/{f}" for f in filters]
    return filters


# ---------------------------------------------------------------------------------------------
# Chunk framing: one chunk per MQTT message on {p}/dev/{id}/chunks/{sha256}
#
#   offset  size  field
#   0       4     magic b"ELC1"
#   4       8     first 8 bytes of the model's sha256 (binary), must match the topic
#   12      4     chunk index, unsigned 32-bit big-endian
