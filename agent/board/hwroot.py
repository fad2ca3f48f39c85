"""Read-only access to files under a hardware root (``/`` or a captured tree of a board).

:mod:`agent.board.hardware` and :mod:`agent.board.thermal` read every file through :class:`HwRoot`,
so
pointing them at ``tests/hwtrees/<board>`` replays that board. Missing or unreadable files read
as ``None``; only a root that is not a directory is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import ConfigError


class HwRoot:
    """Read-only access to files under a hardware root; every path is relative to it.

    ``record``, when given, collects the relative paths that were actually found (read or
    tested for existence); ``tests/hwtrees/capture.py`` uses it to copy exactly those files.
    """

    def __init__(self, root: str | Path = "/", *, record: set[str] | None = None) -> None:
        path = Path(root)
        if not path.is_dir():
            raise ConfigError(
                f"hardware root {str(root)!r} is not a directory",
                hint="use '/' on a real board, or a captured tree such as tests/hwtrees/rpi4b",
            )
        self.path = path
        self.is_system_root = path.resolve() == Path("/")
        self.record = record

    def _abs(self, rel: str) -> Path:
        return self.path / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        """The file's text with surrounding whitespace and NULs stripped, or None."""
        try:
            text = self._abs(rel).read_text(encoding="utf-8", errors="replace")
        except (OSError, ValueError):
            return None
        if self.record is not None:
            self.record.add(rel.lstrip("/"))
        return text.strip().strip("\x00").strip()

    def read_int(self, rel: str) -> int | None:
        text = self.read(rel)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    def exists(self, rel: str) -> bool:
        found = os.path.lexists(self._abs(rel))
        if found and self.record is not None:
            self.record.add(rel.lstrip("/"))
        return found

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self._abs(rel)))
        except OSError:
            return []
