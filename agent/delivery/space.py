"""The model store's quota and disk-space checks: :class:`StoreLimits` and the check ``begin``
runs before staging a model (ManifestError "no_space"), with the byte counts they rest on."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ManifestError
from agent.wire.manifest import Manifest
from agent.wire.reasons import Reason

#: Free space an install leaves beyond the outbox's bound.
OUTBOX_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class StoreLimits:
    max_model_bytes: int | None = None  # refuse any single model larger than this
    max_store_bytes: int | None = None  # models/ + staging/ after staging the new model
    min_free_bytes: int = 0  # free space to leave on the filesystem

    @classmethod
    def for_device(cls, max_model_mb: float, disk_mb: float, outbox_max_mb: float) -> StoreLimits:
        """The agent's limits from its config: an install always leaves room for the outbox's
        whole bound plus 1 MiB (SQLite's journal, the pointers), so a model that fits never
        fills the disk under the telemetry (P-disk)."""
        return cls(
            max_model_bytes=int(max_model_mb * 2**20),
            max_store_bytes=int(disk_mb * 2**20),
            min_free_bytes=int(outbox_max_mb * 2**20) + OUTBOX_SLACK_BYTES,
        )


def file_size(p: Path) -> int:
    """The size of a regular file; 0 for anything else or a file gone meanwhile."""
    try:
        return p.stat().st_size if p.is_file() else 0
    except OSError:
        return 0


def usage(dirs: Iterable[Path]) -> int:
    """Bytes held by the files directly in ``dirs``."""
    return sum(file_size(p) for d in dirs for p in d.iterdir())


def check_space(
    limits: StoreLimits, root: Path, manifest: Manifest, *, used: int, reclaim: int
) -> None:
    """Raise ManifestError("no_space") unless ``manifest``'s model fits: its own size, the store
    holding ``used`` bytes less the ``reclaim`` bytes gc() would free, and the free disk under
    ``root``."""
    lim, size = limits, manifest.size
    used_after = used - reclaim + size
    free = shutil.disk_usage(root).free + reclaim - size
    problem = None
    if lim.max_model_bytes is not None and size > lim.max_model_bytes:
        problem = f"the model ({size} bytes) exceeds max_model_bytes={lim.max_model_bytes}"
    elif lim.max_store_bytes is not None and used_after > lim.max_store_bytes:
        problem = f"the store would hold {used_after} bytes, max_store_bytes={lim.max_store_bytes}"
    elif free < lim.min_free_bytes:
        problem = f"{size} bytes needed, {free + size} free, min_free_bytes={lim.min_free_bytes}"
    if problem:
        raise ManifestError(
            f"no space for {manifest.name} r{manifest.release}: {problem}",
            code=Reason.NO_SPACE,
            hint="free disk space or raise the store limits",
        )
