"""Resumable chunked staging of one model transfer (used by agent.delivery.store.ModelStore).

Per transfer, in the staging directory: ``<sha256>.part`` (preallocated to the model size,
chunks written at ``index * chunk_size`` with pwrite), ``<sha256>.bitmap`` (bit i, LSB first in
byte i // 8, set = chunk i is durable) and ``<sha256>.manifest.json``. The bitmap is rewritten
atomically only after an fsync of the data, every ``fsync_every_bytes`` and at the last chunk:
a crash loses at most the chunks since the last persist, which are then fetched again.

The periodic persists run on a short-lived background thread (one at a time, on a snapshot of
the bitmap taken before the fsync starts, so a persisted bit still always means durable bytes):
the fsync of a few MiB takes milliseconds, during which chunks keep arriving. The last one is
synchronous. The whole-file sha256 is computed as the file fills, on a second background
thread (:class:`HashFollower`): the longest complete prefix is read back from the file and fed
to the hash, so the final check has little left to read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Container
from pathlib import Path

from agent.errors import ManifestError, StoreError
from agent.system.atomicfile import atomic_write, fsync_dir
from agent.system.crashpoints import crash_point
from agent.wire.chunks import compact_ranges
from agent.wire.manifest import Manifest
from agent.wire.reasons import Reason
from agent.wire.topics import valid_sha256

log = logging.getLogger(__name__)

SUFFIXES = (".part", ".bitmap", ".manifest.json")


class Transfer:
    def __init__(self, manifest: Manifest, fd: int, bitmap: bytearray) -> None:
        self.manifest = manifest
        self.fd = fd
        self.bitmap = bitmap
        self.pending = 0  # bytes written since the last fsync + bitmap persist
        self.remaining = len(self.missing())  # chunks not yet written (kept as they arrive)
        self.hasher = hashlib.sha256()  # over chunks [0, hashed) as read back from the file
        self.hashed = 0
        self.persister: threading.Thread | None = None  # a background persist in progress
        self.follower: HashFollower | None = None  # feeds ``hasher`` on its own thread
        self.persist_error: OSError | None = None  # what the last background persist hit

    def has(self, index: int) -> bool:
        return bool(self.bitmap[index >> 3] & (1 << (index & 7)))

    def set(self, index: int) -> None:
        self.bitmap[index >> 3] |= 1 << (index & 7)
        self.remaining -= 1

    def next_missing(self, start: int, limit: int, skip: Container[int] = ()) -> list[int]:
        out: list[int] = []
        bitmap, count = self.bitmap, self.manifest.chunk_count
        i = max(0, start)
        while i < count and len(out) < limit:
            if not bitmap[i >> 3] & (1 << (i & 7)) and i not in skip:
                out.append(i)
            i += 1
        return out

    def missing(self) -> list[int]:
        return self.next_missing(0, self.manifest.chunk_count)


class HashFollower:
    """Feeds a transfer's whole-file sha256 on its own thread as the complete prefix grows.

    hashlib releases the GIL on large buffers, so this second pass over the bytes runs beside
    the core thread (which hashes each chunk against the manifest) instead of after it.
    Only this thread touches ``hasher``/``hashed`` until :meth:`stop` returns.
    """

    def __init__(self, t: Transfer) -> None:
        self.t = t
        self.error: OSError | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="staging-hash", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                Staging.advance_hash(self.t)
            except OSError as exc:
                self.error = exc
                return

    def stop(self) -> OSError | None:
        """Stop and wait; returns what the thread hit, if anything."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        return self.error


class Staging:
    def __init__(
        self, directory: Path, tmp_dir: Path, fsync_every_bytes: int, *, background: bool = True
    ) -> None:
        self.dir, self.tmp_dir = directory, tmp_dir
        self.fsync_every_bytes = fsync_every_bytes
        self.background = background  # False: every persist on the caller's thread
        self._open: dict[str, Transfer] = {}

    def path(self, sha256: str, suffix: str) -> Path:
        return self.dir / f"{sha256}{suffix}"

    def get(self, sha256: str) -> Transfer | None:
        """The open transfer, reloaded from disk after a restart; None if there is none."""
        if not valid_sha256(sha256):
            return None
        if sha256 in self._open:
            return self._open[sha256]
        try:
            raw = json.loads(self.path(sha256, ".manifest.json").read_bytes())
            manifest = Manifest.from_dict(raw)
        except (OSError, ValueError, ManifestError):
            return None
        if manifest.sha256 != sha256:
            return None
        nbytes = (manifest.chunk_count + 7) // 8
        try:
            bits = self.path(sha256, ".bitmap").read_bytes()
        except OSError:
            bits = b""
        bitmap = bytearray(bits) if len(bits) == nbytes else bytearray(nbytes)
        fd = os.open(self.path(sha256, ".part"), os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < manifest.size:
            os.ftruncate(fd, manifest.size)
        self._open[sha256] = t = Transfer(manifest, fd, bitmap)
        return t

    def require(self, sha256: str) -> Transfer:
        t = self.get(sha256)
        if t is None:
            raise StoreError(f"no transfer staged for {sha256!r:.80}", code=Reason.NOT_STAGED)
        return t

    def create(self, manifest: Manifest) -> Transfer:
        """Start a fresh transfer (the caller checked space). ManifestError("no_space") if the
        preallocation fails; nothing is left behind then."""
        sha = manifest.sha256
        atomic_write(
            self.path(sha, ".manifest.json"), manifest.canonical_bytes(), tmp_dir=self.tmp_dir
        )
        fd = os.open(self.path(sha, ".part"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, manifest.size)
        except OSError as exc:
            os.close(fd)
            self.discard(sha)
            raise ManifestError(
                f"cannot reserve {manifest.size} bytes for {manifest.name}: {exc}",
                code=Reason.NO_SPACE,
            ) from exc
        bitmap = bytearray((manifest.chunk_count + 7) // 8)
        atomic_write(self.path(sha, ".bitmap"), bytes(bitmap), tmp_dir=self.tmp_dir)
        self._open[sha] = t = Transfer(manifest, fd, bitmap)
        return t

    def update_manifest(self, t: Transfer, manifest: Manifest) -> None:
        """Same bytes, newer manifest (a higher release): remember the newer one."""
        atomic_write(
            self.path(manifest.sha256, ".manifest.json"),
            manifest.canonical_bytes(),
            tmp_dir=self.tmp_dir,
        )
        t.manifest = manifest

    def write_chunk(self, sha256: str, index: int, data: bytes | memoryview) -> bool:
        t = self.require(sha256)
        m = t.manifest
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < m.chunk_count:
            raise StoreError(
                f"chunk index {index!r:.40} outside [0, {m.chunk_count})", code=Reason.CHUNK_RANGE
            )
        if t.has(index):
            return False
        if not isinstance(data, bytes | bytearray | memoryview):
            raise StoreError("chunk data must be bytes", code=Reason.BAD_CHUNK)
        if (
            len(data) != m.chunk_length(index)
            or hashlib.sha256(data).hexdigest() != m.chunks[index]
        ):
            raise StoreError(f"chunk {index} of {m.name} fails its sha256", code=Reason.BAD_CHUNK)
        try:
            view, offset = memoryview(data), index * m.chunk_size
            while view:
                n = os.pwrite(t.fd, view, offset)
                view, offset = view[n:], offset + n
            t.set(index)
            t.pending += len(data)
            if not self.background:
                self.advance_hash(t)
            elif t.hashed < m.chunk_count and index >= t.hashed:
                if t.follower is None:
                    t.follower = HashFollower(t)
                t.follower.poke()
            if t.remaining == 0:
                self.persist(t)
            elif t.pending >= self.fsync_every_bytes:
                (self._persist_in_background if self.background else self.persist)(t)
        except OSError as exc:
            raise StoreError(f"writing chunk {index}: {exc}", code=Reason.IO_ERROR) from exc
        crash_point(f"after_chunk:{index}")
        return True

    def persist(self, t: Transfer) -> None:
        """fsync the data, THEN record the bitmap: a persisted bit always means durable bytes.
        Waits for a background persist first; OSError if it or this one failed."""
        self._join(t)
        error, t.persist_error = t.persist_error, None
        if error is not None:
            raise error
        self._persist_snapshot(t, bytes(t.bitmap))
        t.pending = 0

    def _persist_snapshot(self, t: Transfer, bitmap: bytes) -> None:
        os.fsync(t.fd)
        atomic_write(self.path(t.manifest.sha256, ".bitmap"), bitmap, tmp_dir=self.tmp_dir)

    def _persist_in_background(self, t: Transfer) -> None:
        if t.persister is not None and t.persister.is_alive():
            return  # one at a time: the next chunk tries again
        if t.persist_error is not None:
            return  # after a failed fsync, a later success proves nothing: persist() reports
        snapshot, t.pending = bytes(t.bitmap), 0  # only chunks written before the fsync

        def run() -> None:
            try:
                self._persist_snapshot(t, snapshot)
            except OSError as exc:
                t.persist_error = exc  # the bitmap on disk is unchanged; reported by persist()

        t.persister = threading.Thread(target=run, name="staging-fsync", daemon=True)
        t.persister.start()

    @staticmethod
    def _join(t: Transfer) -> None:
        if t.persister is not None:
            t.persister.join()
            t.persister = None

    @staticmethod
    def _stop_follower(t: Transfer) -> OSError | None:
        follower, t.follower = t.follower, None
        return follower.stop() if follower is not None else None

    @staticmethod
    def advance_hash(t: Transfer) -> None:
        """Feed the hash the chunks that extend the complete prefix, read back from the file."""
        m = t.manifest
        while t.hashed < m.chunk_count and t.has(t.hashed):
            n = m.chunk_length(t.hashed)
            data = os.pread(t.fd, n, t.hashed * m.chunk_size)
            if len(data) != n:
                raise OSError(f"short read of chunk {t.hashed}: {len(data)} of {n} bytes")
            t.hasher.update(data)
            t.hashed += 1

    def missing(self, sha256: str) -> list[range]:
        return compact_ranges(self.require(sha256).missing())

    def verify(self, sha256: str) -> Path:
        """All chunks durable and the whole file hashes to ``sha256``: returns the .part path.
        StoreError "incomplete", or "bad_model" (the transfer is discarded)."""
        t = self.require(sha256)
        m = t.manifest
        if t.remaining:
            raise StoreError(f"{t.remaining} chunks of {m.name} missing", code="incomplete")
        try:
            if t.pending or t.persister is not None or t.persist_error is not None:
                self.persist(t)
            error = self._stop_follower(t)
            if error is not None:
                raise error
            self.advance_hash(t)  # what the follower had not reached (or all, after a restart)
        except OSError as exc:
            raise StoreError(f"verifying {m.name}: {exc}", code=Reason.IO_ERROR) from exc
        if t.hasher.hexdigest() != sha256 or os.fstat(t.fd).st_size != m.size:
            self.discard(sha256)
            raise StoreError(f"assembled {m.name} does not match its sha256", code=Reason.BAD_MODEL)
        return self.path(sha256, ".part")

    def close(self, sha256: str, *, persist: bool = False) -> None:
        """Close a transfer's file; with ``persist``, first make what was written durable."""
        t = self._open.get(sha256)
        if t is None:
            return
        try:
            if persist and (t.pending or t.persister is not None):
                self.persist(t)
        except OSError as exc:  # shutting down: those chunks are fetched again
            log.warning("could not persist %s on close: %s", sha256[:12], exc)
        finally:
            del self._open[sha256]
            self._join(t)  # never close the fd under a running fsync or hash
            self._stop_follower(t)
            os.close(t.fd)

    def discard(self, sha256: str) -> None:
        """Close and delete a transfer's files (no error if there is none)."""
        self.close(sha256)
        if valid_sha256(sha256):
            for suffix in SUFFIXES:
                self.path(sha256, suffix).unlink(missing_ok=True)
            fsync_dir(self.dir)

    def staged(self) -> list[Manifest]:
        shas = sorted({p.name.split(".")[0] for p in self.dir.glob("*.manifest.json")})
        return [t.manifest for s in shas if (t := self.get(s)) is not None]

    def close_all(self) -> None:
        for sha in list(self._open):
            self.close(sha, persist=True)
