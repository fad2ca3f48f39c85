"""The on-disk model store: resumable staging, verified models, atomic pointers, release counters.

Layout under ``state_dir``::

    models/<sha256>.tflite          fully verified models (only finish() puts files here)
    models/<sha256>.manifest.json   the manifest each one was installed with
    staging/<sha256>.part           chunks written at their offsets (preallocated)
    staging/<sha256>.bitmap         bit i set = chunk i is durable in the .part
    staging/<sha256>.manifest.json  the verified manifest of the transfer
    pointers/current|last_good|trial  JSON {sha256, name, version, release, manifest}
    counters.json                   {"slots": {slot: release}, "releases": {name: release},
                                    "time_floor": unix seconds} (agent.delivery.counters)
    tmp/                            temp files of atomic writes (removed by recover())

Invariants (RELIABILITY P1, P4, P18): ``current`` only ever names a file in models/ whose sha256
was verified; every pointer and counter switch is write-tmp, fsync, rename, fsync-dir; the
bitmap is persisted only after the chunk data it marks is fsynced; at most current, last_good,
trial and one staged model are kept.

Release counters advance at ACCEPT (TUF-style): the daemon calls ``record_release`` as soon as a
manifest has passed every acceptance check and ``begin`` succeeded, not at commit. Once a newer
release was authenticated, an older one is never accepted again, even if the newer install then
fails its health gates. Going back is a NEW manifest with a higher release pointing at the old
bytes (``begin`` finds them already in models/ and there is nothing to fetch). The local
``rollback()`` to last_good is the agent's own recovery (the current model fails to load at
start), never a host command.

The pointer records are agent.delivery.pointers'; the byte limits and the free-space check,
agent.delivery.space's. Not thread-safe: the daemon's core thread owns the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Container
from pathlib import Path

from agent.delivery.counters import ReleaseCounters
from agent.delivery.pointers import POINTERS, Pointer, Recovery
from agent.delivery.space import StoreLimits, check_space, file_size, usage
from agent.delivery.staging import Staging
from agent.errors import ManifestError, StoreError
from agent.system.atomicfile import atomic_write, fsync_dir, unlink_durable
from agent.system.crashpoints import crash_point
from agent.wire.chunks import compact_ranges
from agent.wire.codec import canonical_json
from agent.wire.manifest import DEFAULT_SLOT, Manifest
from agent.wire.reasons import Reason
from agent.wire.topics import valid_sha256

log = logging.getLogger(__name__)


class ModelStore:
    def __init__(
        self,
        state_dir: str | Path,
        limits: StoreLimits | None = None,
        *,
        slot: str = DEFAULT_SLOT,
        fsync_every_bytes: int = 1 << 20,
        background_persist: bool = True,
    ) -> None:
        self.root = Path(state_dir).resolve()
        self.limits = limits or StoreLimits()
        self.models, self.staging_dir = self.root / "models", self.root / "staging"
        self.pointers, self.tmp = self.root / "pointers", self.root / "tmp"
        for d in (self.root, self.models, self.staging_dir, self.pointers, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.counters = ReleaseCounters(self.root / "counters.json", self.tmp, slot)
        self.staging = Staging(
            self.staging_dir, self.tmp, fsync_every_bytes, background=background_persist
        )

    # ---- release counters (anti-rollback) ------------------------------------------------------

    def check_release(self, manifest: Manifest) -> str:
        """ "new" | "replayed"; raises ManifestError "wrong_slot" (a manifest for another slot)
        or "rollback" (an older release than the slot's counter)."""
        return self.counters.check(manifest)

    def record_release(self, manifest: Manifest) -> None:
        """Persist the accepted release (call at accept, see the module docstring)."""
        self.counters.record(manifest)

    def releases(self) -> dict[str, int]:
        return self.counters.releases()

    def slot_release(self) -> int | None:
        """The anti-rollback counter of the slot this device serves."""
        return self.counters.slot_release()

    def trusted_now(self) -> float:
        """Wall clock, never earlier than the newest accepted manifest's ``created``."""
        return self.counters.trusted_now()

    # ---- staging ----------------------------------------------------------------------------

    def model_path(self, sha256: str) -> Path:
        return self.models / f"{_sha(sha256)}.tflite"

    def has_model(self, sha256: str) -> bool:
        return valid_sha256(sha256) and self.model_path(sha256).is_file()

    def begin(self, manifest: Manifest) -> list[range]:
        """Start or resume the transfer of ``manifest``; returns the missing chunk ranges (empty
        when the bytes are already installed: call finish() then set_trial()). Idempotent.
        Checks the byte limits and free disk before writing anything: ManifestError("no_space").
        Starting a transfer discards any other staged one (at most one is kept)."""
        sha = manifest.sha256
        if self.has_model(sha):
            return []
        t = self.staging.get(sha)
        if t is not None and t.manifest.chunks == manifest.chunks:
            if t.manifest != manifest:
                self.staging.update_manifest(t, manifest)
            return compact_ranges(t.missing())
        reclaim = sum(file_size(p) for p in self._gc_plan(keep=sha))
        check_space(self.limits, self.root, manifest, used=self._usage(), reclaim=reclaim)
        self.staging.discard(sha)
        self.gc(keep=sha)
        self.staging.create(manifest)
        log.info(
            "staging %s r%d (%s, %d bytes)", manifest.name, manifest.release, sha, manifest.size
        )
        return compact_ranges(range(manifest.chunk_count))

    def write_chunk(self, sha256: str, index: int, data: bytes | memoryview) -> bool:
        """Verify chunk ``index`` against the manifest and write it at its offset. Returns False
        for a duplicate (no-op).

        StoreError codes: "not_staged", "chunk_range", "bad_chunk", "io_error"."""
        return self.staging.write_chunk(sha256, index, data)

    def missing(self, sha256: str) -> list[range]:
        """Missing chunk indexes as compact ranges. StoreError("not_staged")."""
        return self.staging.missing(sha256)

    def next_missing(
        self, sha256: str, start: int, limit: int, skip: Container[int] = ()
    ) -> list[int]:
        """Up to ``limit`` missing chunk indexes from ``start`` on, leaving out ``skip`` (the
        ones already requested). StoreError("not_staged")."""
        return self.staging.require(sha256).next_missing(start, limit, skip)

    def remaining(self, sha256: str) -> int:
        """How many chunks are still missing (O(1), kept as chunks arrive). StoreError
        ("not_staged")."""
        return self.staging.require(sha256).remaining

    def flush(self, sha256: str) -> None:
        """Make every chunk written so far durable (fsync + bitmap)."""
        t = self.staging.get(sha256)
        if t is not None and (t.pending or t.persister is not None):
            try:
                self.staging.persist(t)
            except OSError as exc:
                message = f"making {sha256[:12]} durable: {exc}"
                raise StoreError(message, code=Reason.IO_ERROR) from exc

    def staged(self) -> list[Manifest]:
        """Manifests of transfers in staging/ (to resume after a restart)."""
        return self.staging.staged()

    def finish(self, sha256: str) -> Path:
        """Verify the whole file and move it into models/ atomically; returns its path.
        StoreError "not_staged", "incomplete", or "bad_model" (staging discarded)."""
        if self.has_model(sha256):
            self.staging.discard(sha256)
            return self.model_path(sha256)
        part = self.staging.verify(sha256)
        manifest = self.staging.require(sha256).manifest
        atomic_write(
            self.models / f"{sha256}.manifest.json", manifest.canonical_bytes(), tmp_dir=self.tmp
        )
        self.staging.close(sha256)
        crash_point("before_finish_rename")
        os.replace(part, self.model_path(sha256))
        fsync_dir(self.models)
        crash_point("after_finish_rename")
        self.staging.discard(sha256)
        log.info("verified %s r%d", manifest.name, manifest.release)
        return self.model_path(sha256)

    def abort(self, sha256: str) -> None:
        """Drop a transfer and its staging files (no error if there is none)."""
        self.staging.discard(sha256)

    # ---- pointers ---------------------------------------------------------------------------

    def pointer(self, which: str) -> Pointer | None:
        if which not in POINTERS:
            raise ValueError(f"unknown pointer {which!r}")
        try:
            obj = json.loads((self.pointers / which).read_bytes())
            manifest = Manifest.from_dict(obj["manifest"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, ManifestError) as exc:
            log.warning("pointer %s is unreadable (%s): ignoring it", which, exc)
            return None
        return Pointer.of(manifest)

    def current(self) -> Pointer | None:
        return self.pointer("current")

    def held(self, which: str) -> Pointer | None:
        """The pointer, if the model it names is still in models/."""
        ptr = self.pointer(which)
        return ptr if ptr is not None and self.has_model(ptr.sha256) else None

    def _set(self, which: str, ptr: Pointer) -> None:
        atomic_write(
            self.pointers / which, canonical_json(ptr.to_dict()), tmp_dir=self.tmp, label=which
        )

    def installed_manifest(self, sha256: str) -> Manifest | None:
        try:
            return Manifest.from_dict(
                json.loads(_with(self.models / _sha(sha256), ".manifest.json").read_bytes())
            )
        except (OSError, ValueError, ManifestError):
            return None

    def set_trial(self, sha256: str, manifest: Manifest | None = None) -> Pointer:
        """Point ``trial`` at a verified model (``manifest`` defaults to the one it was
        installed with). StoreError("not_installed") if it is not in models/."""
        manifest = manifest or self.installed_manifest(sha256)
        if not self.has_model(sha256) or manifest is None or manifest.sha256 != sha256:
            raise StoreError(f"model {sha256!r:.80} is not installed", code=Reason.NOT_INSTALLED)
        ptr = Pointer.of(manifest)
        self._set("trial", ptr)
        crash_point("after_set_trial")
        return ptr

    def commit_trial(self) -> Pointer:
        """last_good = old current, current = trial, trial removed (each step atomic; a crash
        in between is finished or undone by recover())."""
        trial = self.pointer("trial")
        if trial is None:
            raise StoreError("no trial to commit", code=Reason.NO_TRIAL)
        old = self.current()
        crash_point("before_commit")
        if old is not None and old.sha256 != trial.sha256:
            self._set("last_good", old)
        self._set("current", trial)
        unlink_durable(self.pointers / "trial")
        crash_point("after_commit")
        return trial

    def abort_trial(self) -> Pointer | None:
        """Forget the trial (current is untouched); returns it, or None if there was none."""
        trial = self.pointer("trial")
        unlink_durable(self.pointers / "trial")
        return trial

    def rollback(self) -> Pointer | None:
        """Local recovery (the agent's current model fails to load at start): abandon a
        running trial, else current = last_good. Returns the new current.
        StoreError("no_last_good") if there is nothing to go back to (so a repeated rollback
        changes nothing). Counters are untouched. A host going back sends a new manifest."""
        if self.abort_trial() is not None:
            return self.current()
        last, cur = self.pointer("last_good"), self.current()
        if last is None or not self.has_model(last.sha256) or (cur and cur.sha256 == last.sha256):
            raise StoreError("no last good model to roll back to", code=Reason.NO_LAST_GOOD)
        self._set("current", last)
        return last

    # ---- recovery and bounded disk use --------------------------------------------------------

    def recover(self, *, verify: bool = True) -> Recovery:
        """Run at start: remove temp files, finish or undo a half-done commit, roll back a trial
        the agent died in, make sure ``current`` names a verified file (re-hashed when
        ``verify``), drop broken staging entries, gc()."""
        actions: list[str] = []
        removed = [_rel(p, self.root) for p in self.tmp.iterdir() if _remove(p)]
        removed += [_rel(p, self.root) for p in self.pointers.glob(".*.tmp") if _remove(p)]
        removed += [_rel(p, self.root) for p in self.models.glob(".*.tmp") if _remove(p)]
        trial, cur, rolled = self.pointer("trial"), self.current(), None
        if trial is not None and cur is not None and trial.to_dict() == cur.to_dict():
            actions.append("commit_completed")
        elif trial is not None:
            actions.append("trial_rolled_back")
            rolled = trial
        if (self.pointers / "trial").exists():
            unlink_durable(self.pointers / "trial")
        if cur is not None and not self._verified(cur.sha256, verify):
            actions.append("current_invalid")
            last = self.pointer("last_good")
            if last is not None and self._verified(last.sha256, verify):
                self._set("current", last)
                actions.append("current_from_last_good")
            else:
                unlink_durable(self.pointers / "current")
        for m in self.staged():
            if self.has_model(m.sha256):
                self.abort(m.sha256)
        removed += self.gc()
        return Recovery(tuple(actions), rolled, self.current(), tuple(removed))

    def _verified(self, sha256: str, rehash: bool) -> bool:
        path = self.model_path(sha256)
        if not path.is_file():
            return False
        if not rehash:
            return True
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == sha256

    def _pinned(self) -> set[str]:
        return {p.sha256 for w in POINTERS if (p := self.pointer(w)) is not None}

    def _gc_plan(self, keep: str | None) -> list[Path]:
        pinned = self._pinned()
        candidates: dict[str, float] = {}  # unpinned sha -> mtime: staged or installed
        for p in [*self.models.iterdir(), *self.staging_dir.iterdir()]:
            sha = p.name.split(".")[0]
            if valid_sha256(sha) and sha not in pinned:
                candidates[sha] = max(candidates.get(sha, 0.0), p.stat().st_mtime)
        if keep is None and candidates:
            keep = max(candidates, key=lambda s: candidates[s])
        plan: list[Path] = []
        for d in (self.models, self.staging_dir):
            for p in d.iterdir():
                sha = p.name.split(".")[0]
                if p.is_file() and sha not in pinned and sha != keep:
                    plan.append(p)
        return plan

    def gc(self, keep: str | None = None) -> list[str]:
        """Delete every model and staging file except those named by the pointers and ONE
        other model (``keep``, else the most recently touched staged/unpinned one)."""
        removed = []
        for p in self._gc_plan(keep):
            sha = p.name.split(".")[0]
            self.staging.close(sha)
            if _remove(p):
                removed.append(_rel(p, self.root))
        if removed:
            fsync_dir(self.models)
            fsync_dir(self.staging_dir)
            log.info("gc removed %d files", len(removed))
        return removed

    def _usage(self) -> int:
        return usage((self.models, self.staging_dir))

    def close(self) -> None:
        self.staging.close_all()


def _sha(sha256: str) -> str:
    if not valid_sha256(sha256):
        raise StoreError(f"{sha256!r:.80} is not a sha256 hex digest", code=Reason.NOT_INSTALLED)
    return sha256


def _with(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def _remove(p: Path) -> bool:
    try:
        p.unlink()
        return True
    except (FileNotFoundError, IsADirectoryError):
        return False


def _rel(p: Path, root: Path) -> str:
    return str(p.relative_to(root))
