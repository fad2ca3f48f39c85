"""Resumable chunked staging of one model transfer (used by agent.store.ModelStore).

Per transfer, in the staging directory: ``<sha256>.part`` (preallocated to the model size,
chunks written at ``index * chunk_size`` with pwrite), ``<sha256>.bitmap`` (bit i, LSB first in
byte i // 8, set = chunk i is durable) and ``<sha256>.manifest.json``. The bitmap is rewritten
atomically only after an fsync of the data, every ``fsync_every_bytes`` and at the last chunk:
a crash loses at most the chunks since the last persist, which are then fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from agent.atomicfile import atomic_write, fsync_dir
from agent.crashpoints import crash_point
from agent.errors import ManifestError, StoreError
from agent.manifest import Manifest
from agent.protocol import Reason, compact_ranges, valid_sha256

SUFFIXES = (".part", ".bitmap", ".manifest.json")


class Transfer:
    def __init__(self, manifest: Manifest, fd: int, bitmap: bytearray) -> None:
        self.manifest = manifest
        self.fd = fd
        self.bitmap = bitmap
        self.pending = 0  # bytes written since the last fsync + bitmap persist
        self.remaining = len(self.missing())  # chunks not yet written (kept as they arrive)

    def has(self, index: int) -> bool:
        return bool(self.bitmap[index >> 3] & (1 << (index & 7)))

    def set(self, index: int) -> None:
        self.bitmap[index >> 3] |= 1 << (index & 7)
        self.remaining -= 1

    def missing(self) -> list[int]:
        bitmap = self.bitmap
        return [i for i in range(self.manifest.chunk_count) if not bitmap[i >> 3] & (1 << (i & 7))]


class Staging:
    def __init__(self, directory: Path, tmp_dir: Path, fsync_every_bytes: int) -> None:
        self.dir, self.tmp_dir = directory, tmp_dir
        self.fsync_every_bytes = fsync_every_bytes
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

    def write_chunk(self, sha256: str, index: int, data: bytes) -> bool:
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
            if t.pending >= self.fsync_every_bytes or t.remaining == 0:
                self.persist(t)
        except OSError as exc:
            raise StoreError(f"writing chunk {index}: {exc}", code=Reason.IO_ERROR) from exc
        crash_point(f"after_chunk:{index}")
        return True

    def persist(self, t: Transfer) -> None:
        """fsync the data, THEN record the bitmap: a persisted bit always means durable bytes."""
        os.fsync(t.fd)
        path = self.path(t.manifest.sha256, ".bitmap")
        atomic_write(path, bytes(t.bitmap), tmp_dir=self.tmp_dir)
        t.pending = 0

    def missing(self, sha256: str) -> list[range]:
        return compact_ranges(self.require(sha256).missing())

    def verify(self, sha256: str) -> Path:
        """All chunks durable and the whole file hashes to ``sha256``: returns the .part path.
        StoreError "incomplete", or "bad_model" (the transfer is discarded)."""
        t = self.require(sha256)
        m = t.manifest
        if t.missing():
            raise StoreError(f"{len(t.missing())} chunks of {m.name} missing", code="incomplete")
        self.persist(t)
        digest = hashlib.sha256()
        for offset in range(0, m.size, 1 << 20):
            digest.update(os.pread(t.fd, min(1 << 20, m.size - offset), offset))
        if digest.hexdigest() != sha256 or os.fstat(t.fd).st_size != m.size:
            self.discard(sha256)
            raise StoreError(f"assembled {m.name} does not match its sha256", code=Reason.BAD_MODEL)
        return self.path(sha256, ".part")

    def close(self, sha256: str) -> None:
        t = self._open.pop(sha256, None)
        if t is not None:
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
            self.close(sha)
