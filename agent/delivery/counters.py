"""Persisted release counters: the anti-rollback state (RELIABILITY P4).

``counters.json`` = ``{"releases": {name: highest accepted release}, "slots": {slot: highest
accepted release}, "time_floor": seconds}``, replaced atomically. A manifest must be above
both its name's and its slot's counter (Manifest.slot_name: its ``slot``, else its name), so a
model renamed (or an old manifest of another name) cannot take a slot back in time.
``time_floor`` is the newest ``created`` of any accepted manifest: the
device's idea of "now" never goes below it (a Pi without RTC boots in 1970).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.errors import ManifestError, StoreError
from agent.system.atomicfile import atomic_write
from agent.wire.codec import canonical_json
from agent.wire.manifest import Manifest
from agent.wire.reasons import Reason


class ReleaseCounters:
    def __init__(self, path: str | Path, tmp_dir: str | Path) -> None:
        self.path, self.tmp_dir = Path(path), Path(tmp_dir)
        self._releases: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._floor = 0
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_bytes())
            releases, slots = data["releases"], data.get("slots", {})
            floor = data.get("time_floor", 0)
            ok = isinstance(releases, dict) and isinstance(slots, dict) and isinstance(floor, int)
            values = [*releases.values(), *slots.values()] if ok else []
            if not ok or not all(isinstance(v, int) for v in values):
                raise ValueError("unexpected structure")
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(
                f"release counters {self.path} are unreadable: {exc}",
                code=Reason.IO_ERROR,
                hint="restore the file; deleting it re-opens the door to rollback attacks",
            ) from exc
        self._releases, self._slots, self._floor = dict(releases), dict(slots), floor

    def releases(self) -> dict[str, int]:
        return dict(self._releases)

    def check(self, manifest: Manifest) -> str:
        """ "new" (higher than any accepted for this name) or "replayed" (equal: the caller
        treats it as a no-op, or a resume); raises ManifestError("rollback") when lower."""
        slot_seen = self._slots.get(manifest.slot_name)
        if slot_seen is not None and manifest.release < slot_seen:
            raise ManifestError(
                f"{manifest.name} release {manifest.release} is older than release {slot_seen} "
                f"accepted for slot {manifest.slot_name!r}",
                code=Reason.ROLLBACK,
                hint="sign a new manifest with a release counter above the slot's",
            )
        seen = self._releases.get(manifest.name)
        if seen is None or manifest.release > seen:
            return "new"
        if manifest.release == seen:
            return "replayed"
        raise ManifestError(
            f"{manifest.name} release {manifest.release} is older than accepted release {seen}",
            code=Reason.ROLLBACK,
            hint="sign a new manifest with a release counter above the device's",
        )

    def record(self, manifest: Manifest) -> None:
        """Persist ``manifest.release`` as accepted; monotonic, idempotent."""
        release = max(self._releases.get(manifest.name, -1), manifest.release)
        slot = manifest.slot_name
        slot_release = max(self._slots.get(slot, -1), manifest.release)
        floor = max(self._floor, manifest.created)
        if (
            self._releases.get(manifest.name) == release
            and self._slots.get(slot) == slot_release
            and floor == self._floor
        ):
            return
        releases = {**self._releases, manifest.name: release}
        slots = {**self._slots, slot: slot_release}
        data = canonical_json({"releases": releases, "slots": slots, "time_floor": floor})
        atomic_write(self.path, data, tmp_dir=self.tmp_dir)
        self._releases, self._slots, self._floor = releases, slots, floor

    def trusted_now(self) -> float:
        return max(time.time(), float(self._floor))
