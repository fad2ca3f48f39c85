"""Binary chunk framing: one model chunk per MQTT message, and the compact range lists of need
requests."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from agent.errors import ProtocolError
from agent.wire.codec import MAX_CHUNK_DATA
from agent.wire.reasons import Reason
from agent.wire.topics import valid_sha256

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
