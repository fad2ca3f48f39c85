"""Content-addressed cache of converted variants and their host evaluations.

A conversion is keyed by the sha256 of the canonical JSON of (source bytes digest, recipe
fingerprint, backend, calibration data fingerprint, tool versions, cache format); its model and
metadata live at ``<root>/<key[:2]>/<key>.tflite`` and ``.json``. An evaluation is keyed by
(variant sha256, reference sha256, validation fingerprint, runtime). Root: ``$EDGELOOP_CACHE``
or ``~/.cache/edgeloop/variants``. Writes are atomic (temp file + rename), so concurrent
converters at worst do the same work twice. Delete the directory to clear it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.system.atomicfile import atomic_write

log = logging.getLogger(__name__)

ENV_CACHE = "EDGELOOP_CACHE"
FORMAT = 1


def default_root() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "edgeloop" / "variants"


def key_of(**parts: Any) -> str:
    body = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (SavedModel), names included."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class VariantCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get_model(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        model, meta = self._path(key, ".tflite"), self._path(key, ".json")
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            blob = model.read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
            log.warning("cache entry %s is corrupt; converting again", key)
            return None
        return blob, info

    def put_model(self, key: str, model: bytes, meta: dict[str, Any]) -> None:
        target = self._path(key, ".tflite")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, model)
        body = {**meta, "sha256": hashlib.sha256(model).hexdigest()}
        atomic_write(self._path(key, ".json"), json.dumps(body, sort_keys=True).encode())

    def get_eval(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self._path(key, ".eval.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put_eval(self, key: str, value: dict[str, Any]) -> None:
        target = self._path(key, ".eval.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, json.dumps(value, sort_keys=True).encode())
