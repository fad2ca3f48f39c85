"""Persisted release counters: the anti-rollback state (RELIABILITY P4, P19).

``counters.json`` = ``{"slots": {slot: highest accepted release}, "releases": {name: highest
accepted release}, "time_floor": seconds}``, replaced atomically.

The rule is per **slot**, whatever the model's name: a device serves one slot (its config
``slot``, default ``main``); a manifest fills that slot (its ``slot`` field, or, for a manifest
signed without one, the device's slot), a manifest naming another slot is refused
(``wrong_slot``), and its release must be above the slot's counter (equal: ``replayed``, a
no-op; lower: ``rollback``). So ``digits-renamed`` r1 cannot follow ``digits`` r20.

A slot with no counter yet starts at the highest release the device ever accepted, in any slot
or under any name: a ``counters.json`` written before slots (per-name counters only, or slots
named like the model) and a device whose configured slot was renamed keep their history.
``releases`` (per name) is kept for that and for operators; it decides nothing else.

``time_floor`` is the newest ``created`` of any accepted manifest: the device's idea of "now"
never goes below it (a Pi without RTC boots in 1970).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.errors import ManifestError, StoreError
from agent.system.atomicfile import atomic_write
from agent.wire.codec import canonical_json
from agent.wire.manifest import DEFAULT_SLOT, Manifest
from agent.wire.reasons import Reason


class ReleaseCounters:
    def __init__(self, path: str | Path, tmp_dir: str | Path, slot: str = DEFAULT_SLOT) -> None:
        self.path, self.tmp_dir, self.slot = Path(path), Path(tmp_dir), slot
        self._releases: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._floor = 0
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_bytes())
            releases, slots = data.get("releases", {}), data.get("slots", {})
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
        """The highest release accepted per model name (informational)."""
        return dict(self._releases)

    def slot_release(self) -> int | None:
        """The device slot's counter: a manifest must be above it (None: nothing accepted)."""
        return self._counter(self.slot)

    def _counter(self, slot: str) -> int | None:
        if slot in self._slots:
            return self._slots[slot]
        history = [*self._slots.values(), *self._releases.values()]
        return max(history) if history else None

    def check(self, manifest: Manifest) -> str:
        """ "new" (above the slot's counter) or "replayed" (equal: the caller treats it as a
        no-op, or a resume); raises ManifestError "wrong_slot" for a manifest naming another
        slot than the device's, "rollback" for a lower release."""
        slot = manifest.slot_on(self.slot)
        if slot != self.slot:
            raise ManifestError(
                f"{manifest.name} r{manifest.release} is for slot {slot!r}; this device serves "
                f"slot {self.slot!r}",
                code=Reason.WRONG_SLOT,
                hint=f"sign it for slot {self.slot!r} (edge-deploy push --slot {self.slot})",
            )
        seen = self._counter(slot)
        if seen is None or manifest.release > seen:
            return "new"
        if manifest.release == seen:
            return "replayed"
        raise ManifestError(
            f"{manifest.name} release {manifest.release} is older than release {seen} "
            f"accepted for slot {slot!r}",
            code=Reason.ROLLBACK,
            hint="sign a new manifest with a release counter above the slot's "
            "(the device's state reports it as slot_release)",
        )

    def record(self, manifest: Manifest) -> None:
        """Persist ``manifest.release`` as accepted for its slot; monotonic, idempotent."""
        slot = manifest.slot_on(self.slot)
        slot_release = max(self._counter(slot) or -1, manifest.release)
        release = max(self._releases.get(manifest.name, -1), manifest.release)
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
