"""The pull transfer of one simulated device: windows of need requests, per-chunk and
whole-file verification with the agent's own framing (:func:`agent.wire.chunks.decode_chunk`).

Chunk bytes are hashed as they arrive and then dropped (a simulated device keeps no model file),
so a thousand devices pulling a model cost the simulator only their hash states.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ProtocolError
from agent.wire.chunks import compact_ranges, decode_chunk
from agent.wire.manifest import Manifest
from agent.wire.messages import NeedRequest
from agent.wire.reasons import Reason
from agent.wire.stream import StreamPosition

#: What a device asks for at a time (the agent's default transfer window is 2 MiB).
WINDOW_BYTES = 2 << 20
#: No chunk for this long while some are missing: ask again for what is missing.
STALL_S = 2.0


@dataclass
class Transfer:
    """Which chunks arrived; the whole-file hash runs over the contiguous prefix."""

    manifest: Manifest
    fate: str  # "commit" | "install_fail" | "trial_fail" | "offline"
    reply_to: tuple[str, bytes | None] | None  # (response topic, correlation data)
    cmd_id: str
    have: set[int] = field(default_factory=set)
    hashed: int = 0  # chunks [0, hashed) went through the whole-file hash
    asked_until: int = 0  # chunks [0, asked_until) were requested
    last_rx: float = 0.0
    bad_chunks: int = 0
    stream: StreamPosition | None = None  # on the shared stream (agent.wire.stream)
    following: bool = False  # subscribed to it (the device unsubscribes once it is left)
    repaired_until: int = 0  # stream mode: chunks below this were checked for losses
    _hasher: Any = field(default_factory=hashlib.sha256)
    _pending: dict[int, bytes] = field(default_factory=dict)  # out of order, not yet hashed

    @property
    def window_chunks(self) -> int:
        return max(1, WINDOW_BYTES // self.manifest.chunk_size)

    @property
    def complete(self) -> bool:
        return self.hashed >= self.manifest.chunk_count

    def ref(self) -> dict[str, Any]:
        m = self.manifest
        return {"sha256": m.sha256, "name": m.name, "version": m.version, "release": m.release}

    def follow_stream(self) -> None:
        self.stream, self.following = StreamPosition(), True

    def next_need(self, now: float, *, force: bool = False) -> NeedRequest | None:
        """The next window to ask for, or the missing chunks again after a stall; on the
        shared stream: the join, then what the stream passed without delivering."""
        if self.stream is not None:
            need = self._stream_need(now, force)
            if self.stream is not None:
                return need
        count = self.manifest.chunk_count
        outstanding = [i for i in range(self.hashed, self.asked_until) if i not in self.have]
        if outstanding and not force and now - self.last_rx < STALL_S:
            return None  # the window is still arriving
        if outstanding:
            self.last_rx = now  # one re-request per stall
            return NeedRequest.from_ranges(self.manifest.sha256, compact_ranges(outstanding))
        if self.asked_until >= count:
            return None
        start = self.asked_until
        self.asked_until = min(count, start + self.window_chunks)
        self.last_rx = now
        want = [i for i in range(start, self.asked_until) if i not in self.have]
        if not want:
            return self.next_need(now)
        return NeedRequest.from_ranges(self.manifest.sha256, compact_ranges(want))

    def _stream_need(self, now: float, force: bool) -> NeedRequest | None:
        s, m = self.stream, self.manifest
        assert s is not None
        if not s.joined:
            s.joined, self.last_rx = True, now
            first = range(0, min(m.chunk_count, self.window_chunks))
            return NeedRequest.from_ranges(m.sha256, [first], stream=True)
        if force or now - self.last_rx >= STALL_S:
            if s.stalled():  # not started yet: the host waits for the wave; join again
                return self._stream_need(now, force=False)
            self.stream = None  # the stream is over or lost: pull the rest on our own
            self.asked_until = self.hashed
            return None
        lost = s.lost(i for i in range(self.repaired_until, s.next) if i not in self.have)
        self.repaired_until = max(self.repaired_until, s.next)
        return (
            NeedRequest.from_ranges(m.sha256, compact_ranges(lost), stream=True) if lost else None
        )

    def receive(self, payload: bytes, now: float, *, stream: bool = False) -> bool:
        """Take one chunk message (from the device's topic or, ``stream``, the shared one);
        False when it was refused (bad framing, hash or length)."""
        m = self.manifest
        try:
            frame = decode_chunk(payload, m.sha256)
        except ProtocolError:
            self.bad_chunks += 1
            return False
        i = frame.index
        if stream and self.stream is not None:
            self.stream.passed(i)
        data = bytes(frame.data)
        if (
            i >= m.chunk_count
            or len(data) != m.chunk_length(i)
            or hashlib.sha256(data).hexdigest() != m.chunks[i]
        ):
            self.bad_chunks += 1  # dropped: asked for again after a stall, like the agent
            return False
        self.last_rx = now
        if i in self.have:
            return True
        self.have.add(i)
        if i == self.hashed:
            self._hasher.update(data)
            self.hashed += 1
            while self.hashed in self._pending:
                self._hasher.update(self._pending.pop(self.hashed))
                self.hashed += 1
        elif i > self.hashed:
            self._pending[i] = data
        return True

    def verify(self) -> str | None:
        """Whole-file check once complete: None when the sha256 matches, else a reason code."""
        if not self.complete:
            return Reason.INCOMPLETE
        return None if self._hasher.hexdigest() == self.manifest.sha256 else Reason.BAD_MODEL
