"""The transfer of an install's bytes: the window of chunks requested and not yet received, the
need requests that refill it, a bad chunk asked for again, the requests lost with a connection,
and a transfer left in staging resumed after a restart. Once every chunk is in, the transfer hands
over to agent.delivery.trial (verify, probe, trial).
"""

from __future__ import annotations

import logging
import time

from agent.config import LimitsConfig
from agent.delivery.install_base import Install, InstallerBase, _ref
from agent.errors import StoreError
from agent.system.crashpoints import crash_point
from agent.wire.chunks import decode_chunk
from agent.wire.manifest import Manifest
from agent.wire.messages import EventKind
from agent.wire.reasons import Reason
from agent.wire.stream import StreamPosition

log = logging.getLogger("agent.delivery.install")  # the installer's lines keep their name

# Bytes requested and not yet received: enough to cover the host's answer time on a LAN. On
# loopback (one run, devices pushed in turn: tests/bench_delivery.py and docs/benchmarks.md)
# 1 MiB moved 168 MB/s, 2 MiB 196 MB/s, 8 MiB 176 MB/s; a link with a long round trip wants
# more (bandwidth x round trip). One default, the config's: [limits] transfer_window_kb.
DEFAULT_WINDOW_BYTES = LimitsConfig.transfer_window_kb * 1024
MAX_BAD_CHUNK = 5  # the same chunk failing its hash this often ends the install (endless data)


class Transfer(InstallerBase):
    """The downloading phase of the installer."""

    def resume_staged(self) -> None:
        """After a restart: continue a transfer left in staging (only missing chunks move)."""
        if self.active is not None:
            return
        for manifest in self.store.staged():
            delegate = manifest.variant.delegate or self.default_delegate
            self.active = Install(manifest, None, self.default_gates, delegate)
            log.info("resuming the transfer of %s r%d", manifest.name, manifest.release)
            self.out.event(EventKind.INSTALL_PROGRESS, "resumed", **_ref(manifest))
            self._continue()
            return

    def join_stream(self, a: Install) -> None:
        """The deploy asked for the shared stream (``"stream": true``): subscribe to
        ``{p}/models/{sha256}/chunks`` before the first need, which tells the host this device
        listens (``stream: true``); from then on only chunks the stream has passed are asked
        for (agent.wire.stream)."""
        a.stream = StreamPosition()
        self.out.follow_stream(a.manifest.sha256, True)

    def on_chunk(self, sha256: str, payload: bytes, *, stream: bool = False) -> None:
        """One chunk frame, from the device's own chunk topic or (``stream``) the shared one:
        the same checks and the same staging either way."""
        a = self.active
        if a is None or a.phase != "downloading" or a.manifest.sha256 != sha256:
            self.stale_chunks += 1  # a duplicate or a late chunk of a finished transfer
            return
        frame = decode_chunk(payload, sha256)  # ProtocolError -> the caller reports it
        if stream and a.stream is not None:
            a.stream.passed(frame.index)
        a.inflight.pop(frame.index, None)
        a.last_rx = time.monotonic()
        if a.first_chunk is None:
            a.first_chunk = a.last_rx
        try:
            fresh = self.store.write_chunk(sha256, frame.index, frame.data)
        except StoreError as exc:
            if exc.code == Reason.BAD_CHUNK:
                self._bad_chunk(a, frame.index)
                return
            raise
        if fresh:
            a.received_bytes += len(frame.data)
        crash_point(f"after_chunk:{frame.index}")
        self._continue()

    def _bad_chunk(self, a: Install, index: int) -> None:
        """Ask again for this one chunk only (the rest of the window is still on its way)."""
        a.corrupt_chunks += 1
        a.bad_by_index[index] = n = a.bad_by_index.get(index, 0) + 1
        if n > MAX_BAD_CHUNK:
            self._fail_install(
                a, Reason.BAD_CHUNK, f"chunk {index} failed its sha256 {n} times: giving up"
            )
            return
        log.warning("chunk %d of %s failed its hash: asking again", index, a.manifest.sha256)
        a.inflight[index] = time.monotonic()
        self.out.request_chunks(a.manifest.sha256, [index], stream=a.stream is not None)

    def on_connected(self) -> None:
        """Back online. Chunks requested before the link went down were lost with it (QoS 0
        chunks) or come again from the broker (QoS 1, persistent session): asking for the
        whole window again at once would move the latter twice. So ask only for what is not
        already requested, and ask again for the earlier requests that are still missing
        ``reconnect_grace_s`` later (tick)."""
        a = self.active
        if a is None or a.phase != "downloading":
            return
        a.reconnected = time.monotonic()
        self._request_more(a)

    def _continue(self) -> None:
        a = self.active
        if a is None or a.phase != "downloading":
            return
        store = self.store
        try:
            # bytes already verified in models/ (a new release of last_good, a re-push after a
            # crash between finish and trial): there is no staging and nothing to fetch. Only
            # this agent writes models/, so once is enough.
            if not a.checked_models:
                a.checked_models = True
                if store.has_model(a.manifest.sha256):
                    self._leave_stream(a)
                    self._finish_transfer(a)
                    return
            if store.remaining(a.manifest.sha256) == 0:
                self._leave_stream(a)
                self._finish_transfer(a)
                return
        except StoreError as exc:  # staging vanished or unreadable: end this install cleanly
            self._fail_install(a, exc.code, exc.message)
            return
        self._request_more(a)
        now = time.monotonic()
        if now - a.last_progress > 1.0:
            a.last_progress = now
            self.out.progress(
                {**a.summary(), "received_bytes": a.received_bytes, "size": a.manifest.size}
            )

    def _request_more(self, a: Install, *, force: bool = False) -> None:
        if force:
            a.inflight.clear()
            a.scan_from = 0
            if a.stream is not None and a.stream.joined and not a.stream.stalled():
                # the stream is over, or this device lost it: pull the rest on its own
                log.info("the shared stream of %s stalled: pulling the rest", a.manifest.sha256)
                self._leave_stream(a)
        window = self.window_chunks(a.manifest)
        if len(a.inflight) > window // 2:
            return  # refilled when half the window has arrived: a few large requests
        room = window - len(a.inflight)
        # from where the last request ended: a chunk lost on the way is asked for again by
        # the timeout (force, from 0), a corrupt one at once (_bad_chunk), so no rescan here
        want = self.store.next_missing(a.manifest.sha256, a.scan_from, room, a.inflight)
        s = a.stream
        if s is not None and not s.joined:
            # the join: the first window, marked stream; the host answers what its stream has
            # passed already (a late joiner) and leaves the rest to the stream
            s.joined = True
            self.out.request_chunks(a.manifest.sha256, want, stream=True)
            return
        if s is not None:
            want = s.lost(want)  # what the stream has not reached yet is still coming
        if want:
            a.scan_from = want[-1] + 1
            now = time.monotonic()
            a.inflight.update((i, now) for i in want)
            self.out.request_chunks(a.manifest.sha256, want, stream=s is not None)

    def window_chunks(self, m: Manifest) -> int:
        """Chunks requested and not yet received, at most: ``window_bytes`` worth, >= 4."""
        return max(4, self.window_bytes // max(1, m.chunk_size))
