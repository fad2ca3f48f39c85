"""Crash-safe small-file writes: write a temp file, fsync it, rename over the target, fsync the
directory. After a crash the target holds either the old or the new content, never a mix."""

from __future__ import annotations

import os
from pathlib import Path

from agent.system.crashpoints import crash_point


def fsync_dir(path: str | Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    target: str | Path, data: bytes, *, tmp_dir: str | Path | None = None, label: str | None = None
) -> None:
    """Replace ``target`` with ``data`` atomically and durably.

    ``tmp_dir`` must be on the same filesystem as ``target`` (default: its directory). With a
    ``label`` the crash points ``before_pointer_rename:<label>`` and
    ``after_pointer_rename:<label>`` are offered around the rename.
    """
    target = Path(target)
    tmp = Path(tmp_dir or target.parent) / f".{target.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if label:
        crash_point(f"before_pointer_rename:{label}")
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if label:
        crash_point(f"after_pointer_rename:{label}")


def unlink_durable(path: str | Path) -> bool:
    """Remove ``path`` if present and fsync its directory; True if something was removed."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
