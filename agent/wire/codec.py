"""The strict JSON codec every message goes through, and the size caps checked before parsing.
Canonical JSON (used for every payload edgeloop encodes and for the bytes a manifest signature
covers): ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8. Signed objects contain no floats (integers, strings, bools,
null, lists and objects only), which makes this a subset of RFC 8785 (JCS) for them.
"""

from __future__ import annotations

import json
from typing import Any

from agent.errors import ProtocolError
from agent.wire.reasons import Reason

# Size caps checked before anything is parsed (bytes of the MQTT payload).
MAX_COMMAND_BYTES = 1 << 20  # a deploy command carries the signed manifest
MAX_MANIFEST_BYTES = 512 << 10  # ~7,800 chunk hashes: a 500 MB model at 64 KiB chunks
MAX_NEED_BYTES = 64 << 10
MAX_EVENT_BYTES = 256 << 10
MAX_TELEMETRY_BYTES = 64 << 10
MAX_STATE_BYTES = 256 << 10
MAX_CHUNK_DATA = 4 << 20
MAX_JSON_DEPTH = 32


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


def depth_ok(obj: Any, depth: int = 0, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most ``limit`` levels."""
    if depth > limit:
        return False
    if isinstance(obj, dict):
        return all(depth_ok(v, depth + 1, limit) for v in obj.values())
    if isinstance(obj, list):
        return all(depth_ok(v, depth + 1, limit) for v in obj)
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
    if not depth_ok(value):
        raise ProtocolError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# ---------------------------------------------------------------------------------------------
# Identifiers and topics
