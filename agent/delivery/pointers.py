"""The model store's pointer records: what ``pointers/current|last_good|trial`` hold
(:class:`Pointer`) and what ``ModelStore.recover()`` found and did (:class:`Recovery`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.wire.manifest import Manifest
from agent.wire.status import ModelRef

POINTERS = ("current", "last_good", "trial")


@dataclass(frozen=True)
class Pointer:
    sha256: str
    name: str
    version: str
    release: int
    manifest: Manifest

    def ref(self) -> dict[str, Any]:
        """sha256, name, version, release: how events name a model."""
        return {
            "sha256": self.sha256,
            "name": self.name,
            "version": self.version,
            "release": self.release,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.ref(), "manifest": self.manifest.to_dict()}

    def model_ref(self, delegate: str | None = None) -> ModelRef:
        """How the device's state names this model."""
        return ModelRef(**self.ref(), variant=self.manifest.variant.to_dict(), delegate=delegate)

    @classmethod
    def of(cls, manifest: Manifest) -> Pointer:
        return cls(manifest.sha256, manifest.name, manifest.version, manifest.release, manifest)


@dataclass(frozen=True)
class Recovery:
    """What recover() found and did, for the daemon to report."""

    actions: tuple[str, ...]
    rolled_back: Pointer | None  # the trial abandoned because the agent died during it
    current: Pointer | None
    removed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "actions": list(self.actions),
            "rolled_back": None if self.rolled_back is None else self.rolled_back.to_dict(),
            "current": None if self.current is None else self.current.to_dict(),
            "removed": list(self.removed),
        }
