"""The MQTT wire protocol: topics (the one place that knows the prefix), reason codes, the strict
JSON codec every message goes through, and the binary chunk framing.

The typed JSON messages (commands, need requests, events, telemetry, state) live in
``agent.messages``; the reference for both is docs/protocol.md.

Canonical JSON (used for every payload edgeloop encodes and for the bytes a manifest signature
covers): ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8. Signed objects contain no floats (integers, strings, bools,
null, lists and objects only), which makes this a subset of RFC 8785 (JCS) for them.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from agent.errors import ProtocolError

DEFAULT_PREFIX = "edgeloop"

# Size caps checked before anything is parsed (bytes of the MQTT payload).
MAX_COMMAND_BYTES = 1 << 20  # a deploy command carries the signed manifest
MAX_MANIFEST_BYTES = 512 << 10  # ~7,800 chunk hashes: a 500 MB model at 64 KiB chunks
MAX_NEED_BYTES = 64 << 10
MAX_EVENT_BYTES = 256 << 10
MAX_TELEMETRY_BYTES = 64 << 10
MAX_STATE_BYTES = 256 << 10
MAX_CHUNK_DATA = 4 << 20
MAX_JSON_DEPTH = 32

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_ID_RE = re.compile(ID_PATTERN)
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_VERB_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")

VERBS = frozenset({"deploy", "rollback", "bench", "config", "rebirth", "state"})


class Reason(StrEnum):
    """Every reason code edgeloop puts in events, command replies and errors."""

    # manifest acceptance, in the order the checks run (docs/protocol.md)
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    INVALID = "invalid"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    ROLLBACK = "rollback"
    INCOMPATIBLE = "incompatible"
    NO_SPACE = "no_space"
    # transfer and store
    BAD_CHUNK = "bad_chunk"
    CHUNK_RANGE = "chunk_range"
    NOT_STAGED = "not_staged"
    INCOMPLETE = "incomplete"
    BAD_MODEL = "bad_model"
    NOT_INSTALLED = "not_installed"
    NO_TRIAL = "no_trial"
    NO_LAST_GOOD = "no_last_good"
    IO_ERROR = "io_error"
    # protocol
    BAD_TOPIC = "bad_topic"
    UNKNOWN_VERB = "unknown_verb"
    # install outcome (the daemon)
    PROBE_FAILED = "probe_failed"
    HEALTH_FAILED = "health_failed"
    CRASHED_IN_TRIAL = "crashed_in_trial"
    BUSY = "busy"


# ---------------------------------------------------------------------------------------------
# JSON codec


def canonical_json(obj: Any, *, allow_floats: bool = True) -> bytes:
    """Encode ``obj`` as canonical JSON bytes (see the module docstring).

    Raises ProtocolError("malformed") for values JSON cannot carry (NaN, infinities, non-string
    keys, other types) and, with ``allow_floats=False``, for any float.
    """
    if not allow_floats:
        _reject_floats(obj, 0)
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError (ValueError)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"value cannot be encoded as canonical JSON: {exc}") from exc


def _reject_floats(obj: Any, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError("JSON nested too deeply", code=Reason.MALFORMED)
    if isinstance(obj, float):
        raise ProtocolError("floats are not allowed in signed JSON; use integers")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_floats(value, depth + 1)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _reject_floats(value, depth + 1)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth_ok(obj: Any, depth: int = 0) -> bool:
    if depth > MAX_JSON_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def parse_json_object(data: bytes | bytearray | memoryview, *, max_bytes: int, what: str) -> Any:
    """Strictly parse one JSON payload: size cap first, then UTF-8, then JSON without NaN,
    Infinity or duplicate keys, bounded nesting. Returns the parsed value (callers check the
    shape). Raises ProtocolError with code "too_large" or "malformed"."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: payload must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(
            f"{what}: payload of {len(data)} bytes exceeds the {max_bytes}-byte limit",
            code=Reason.TOO_LARGE,
            hint="send smaller messages",
        )
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not valid UTF-8 JSON ({exc})") from exc
    if not _depth_ok(value):
        raise ProtocolError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# ---------------------------------------------------------------------------------------------
# Identifiers and topics


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
    kind: str  # "state" | "telemetry" | "events" | "cmd" | "chunks" | "need" | "infer"
    arg: str | None  # the verb for "cmd", the sha256 for "chunks", else None


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

    def device_subscriptions(self) -> list[str]:
        """Topic filters the agent subscribes to."""
        return [f"{self.base}/cmd/+", f"{self.base}/chunks/+", self.infer]

    def parse(self, topic: str) -> ParsedTopic:
        """parse_topic() that also insists the topic belongs to this device."""
        parsed = parse_topic(topic, self.prefix)
        if parsed.device_id != self.device_id:
            raise ProtocolError(f"topic {topic!r} is for another device", code=Reason.BAD_TOPIC)
        return parsed


def host_subscriptions(prefix: str = DEFAULT_PREFIX, share_group: str | None = None) -> list[str]:
    """Topic filters a host worker subscribes to (all devices); with ``share_group`` they are
    MQTT5 shared subscriptions ``$share/{group}/...`` so several workers split the load."""
    check_prefix(prefix)
    filters = [f"{prefix}/dev/+/{kind}" for kind in ("state", "telemetry", "events", "need")]
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
#   16      n     chunk data (n <= MAX_CHUNK_DATA)

CHUNK_MAGIC = b"ELC1"
_CHUNK_HEADER = struct.Struct(">4s8sI")
CHUNK_HEADER_SIZE = _CHUNK_HEADER.size


@dataclass(frozen=True)
class ChunkFrame:
    sha256: str
    index: int
    data: bytes | memoryview  # decode_chunk: a view into the message payload (no copy)

    def encode(self) -> bytes:
        return encode_chunk(self.sha256, self.index, self.data)


@functools.lru_cache(maxsize=16)
def _sha_prefix(sha256: str) -> bytes | None:
    """The 8 header bytes for a model (None if ``sha256`` is not one): once per model, not
    once per chunk."""
    return bytes.fromhex(sha256[:16]) if valid_sha256(sha256) else None


def encode_chunk(sha256: str, index: int, data: bytes | memoryview) -> bytes:
    """Frame one chunk (header + data), copying ``data`` once."""
    prefix = _sha_prefix(sha256) if isinstance(sha256, str) else None
    if prefix is None:
        raise ProtocolError(f"{sha256!r} is not a sha256 hex digest")
    if not 0 <= index < 1 << 32 or len(data) > MAX_CHUNK_DATA:
        raise ProtocolError(f"chunk index {index} or size {len(data)} out of range")
    return b"".join((_CHUNK_HEADER.pack(CHUNK_MAGIC, prefix, index), data))


def decode_chunk(payload: bytes | bytearray | memoryview, sha256: str) -> ChunkFrame:
    """Parse a chunk message whose topic named ``sha256``; raises ProtocolError."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError("chunk payload must be bytes")
    if len(payload) > CHUNK_HEADER_SIZE + MAX_CHUNK_DATA:
        raise ProtocolError(f"chunk of {len(payload)} bytes is too large", code=Reason.TOO_LARGE)
    if len(payload) < CHUNK_HEADER_SIZE:
        raise ProtocolError(f"chunk of {len(payload)} bytes is shorter than its header")
    magic, prefix, index = _CHUNK_HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise ProtocolError(f"chunk magic {magic!r} is not {CHUNK_MAGIC!r}")
    expected = _sha_prefix(sha256) if isinstance(sha256, str) else None
    if expected is None or prefix != expected:
        raise ProtocolError("chunk header names another model than its topic")
    return ChunkFrame(sha256, int(index), memoryview(payload)[CHUNK_HEADER_SIZE:])


def compact_ranges(indexes: Iterable[int]) -> list[range]:
    """Sorted indexes -> maximal runs as ``range`` objects (``[0,1,2,5]`` -> ``[0:3, 5:6]``)."""
    out: list[range] = []
    start = prev = None
    for i in sorted(set(indexes)):
        if start is None or prev is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(range(start, prev + 1))
            start = prev = i
    if start is not None and prev is not None:
        out.append(range(start, prev + 1))
    return out
