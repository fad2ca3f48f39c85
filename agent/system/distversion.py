"""Installed distribution versions without importing ``importlib.metadata`` (~0.9 MB resident
in the agent for one string per runtime).

Looks for ``<name>-<version>.dist-info`` (or ``.egg-info``) on ``sys.path`` with the name
normalized as wheels write it, reads the ``Version:`` header, and defers to
``importlib.metadata`` when ``sys.path`` holds zip files.
"""

from __future__ import annotations

import functools
import os
import re
import sys

_NORMALIZE = re.compile(r"[-_.]+")


def _norm(name: str) -> str:
    return _NORMALIZE.sub("_", name).lower()


@functools.cache
def installed_version(dist: str) -> str | None:
    """The version of installed distribution ``dist`` ("ai-edge-litert"), or None."""
    want = _norm(dist)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            stem, dot, kind = name.rpartition(".")
            if not dot or kind not in ("dist-info", "egg-info"):
                continue
            project = stem.split("-", 1)[0]
            if _norm(project) != want:
                continue
            meta = "METADATA" if kind == "dist-info" else "PKG-INFO"
            version = _read_version(os.path.join(entry or ".", name, meta))
            if version:
                return version
    # zipped entries (a zipapp, an .egg) are importlib.metadata's business
    if any(os.path.isfile(entry) for entry in sys.path if entry):
        return _fallback(dist)
    return None


def _read_version(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip() or None
                if not line.strip():  # the end of the headers
                    break
    except OSError:
        return None
    return None


def _fallback(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
