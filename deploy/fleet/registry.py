"""The host registry: one SQLite file holding everything the closed loop knows.

Devices and their hardware classes, models and their converted variants (with host metrics),
deployments, telemetry windows (roll-ups per class and variant are computed from them), the
per-model release counters, every optimizer decision with its evidence, and rollouts. All loop
state lives here, so a host restarted mid-loop reopens the file and carries on.

Plumbing (open, migrate, transactions) is in :mod:`deploy.fleet.registry_db`, decisions and
rollouts in :mod:`deploy.fleet.registry_history`; this module holds classes, devices, models,
variants, deployments and telemetry.

The schema is versioned with ``PRAGMA user_version`` and the ordered list in
:mod:`deploy.fleet.migrations`; opening is idempotent. One connection per ``Registry``, guarded by a
lock, so the threads of one host process can share it; WAL lets readers (``edge-deploy fleet``,
the report) run beside the loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from agent.wire.status import Telemetry
from deploy.fleet.engine import Row
from deploy.fleet.registry_db import dumps, now_or
from deploy.fleet.registry_history import RegistryHistory
from deploy.fleet.registry_types import (
    Deployment,
    Device,
    HardwareClass,
    ModelRow,
    Stats,
    Variant,
    class_id,
)
from deploy.fleet.rollup import TOUCH_LAST_SEEN, WINDOW_INSERT, WindowRow, rollup, window_row

log = logging.getLogger(__name__)

OUTCOMES = ("committed", "rolled_back", "rejected")
# fmt: skip below: the variants table's columns packed; one per line would hide them over 17 lines
VARIANT_COLUMNS = (
    "id", "model", "recipe", "path", "sha256", "size", "quantization", "accuracy", "agreement",
    "snr_db", "operators", "min_runtime", "conversion_s", "available", "unavailable_reason",
)  # fmt: skip


class Registry(RegistryHistory):
    """``Registry(path)``: open (creating and migrating as needed) the registry at ``path``."""

    # ---- hardware classes and devices ---------------------------------------------------------
    def upsert_class(self, cls: HardwareClass) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO hardware_classes VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "description = CASE WHEN excluded.description != '' THEN excluded.description "
                "ELSE hardware_classes.description END",
                (
                    cls.id,
                    cls.hardware_class,
                    cls.board,
                    cls.board_family,
                    cls.accelerator,
                    cls.runtime,
                    cls.description,
                ),
            )

    def hardware_classes(self) -> list[HardwareClass]:
        return [HardwareClass(**dict(r)) for r in self._all("SELECT * FROM hardware_classes")]

    def hardware_class(self, cid: str) -> HardwareClass | None:
        rows = self._all("SELECT * FROM hardware_classes WHERE id = ?", (cid,))
        return HardwareClass(**dict(rows[0])) if rows else None

    def upsert_device(
        self,
        device_id: str,
        *,
        hardware_class: str | None = None,
        board: str | None = None,
        accelerator: str | None = None,
        runtime: str | None = None,
        runtime_version: str | None = None,
        online: bool = True,
        state: Mapping[str, Any] | None = None,
        last_seen: float | None = None,
    ) -> Device:
        """Insert or update a device; ``hardware_class`` is a registry class id (see
        :func:`deploy.fleet.registry_types.class_id`), created from its id when unknown."""
        if hardware_class is not None and self.hardware_class(hardware_class) is None:
            self.upsert_class(HardwareClass.from_id(hardware_class))
        seen = time.time() if last_seen is None else last_seen
        with self._tx() as db:
            db.execute(
                "INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "hardware_class = COALESCE(excluded.hardware_class, devices.hardware_class), "
                "board = COALESCE(excluded.board, devices.board), "
                "accelerator = COALESCE(excluded.accelerator, devices.accelerator), "
                "runtime = COALESCE(excluded.runtime, devices.runtime), "
                "runtime_version = COALESCE(excluded.runtime_version, devices.runtime_version), "
                "last_seen = excluded.last_seen, online = excluded.online, "
                "state = CASE WHEN excluded.state != '{}' THEN excluded.state "
                "ELSE devices.state END",
                (
                    device_id,
                    hardware_class,
                    board,
                    accelerator,
                    runtime,
                    runtime_version,
                    seen,
                    int(online),
                    dumps(dict(state or {})),
                ),
            )
        device = self.device(device_id)
        assert device is not None
        return device

    def upsert_device_from_state(
        self, device_id: str, state: Mapping[str, Any], *, now: float | None = None
    ) -> Device:
        """Record a device from its retained ``state`` message
        (agent.wire.messages.State.to_dict()).
        A death message (``online`` false, no hardware) only marks the device offline."""
        hw = state.get("hardware") or {}
        rt = state.get("runtime") or {}
        hw_class, rt_name = state.get("hardware_class"), rt.get("name")
        cid = None
        if hw_class and rt_name:
            cid = class_id(str(hw_class), str(rt_name))
            parsed = HardwareClass.from_id(cid)
            board = str(hw.get("board_id") or parsed.board)
            family = str(hw.get("board_family") or parsed.board_family)
            family = board if family == "generic" else family  # generic boards share nothing
            cls = HardwareClass(
                cid,
                str(hw_class),
                board,
                family,
                parsed.accelerator,
                str(rt_name),
                str(hw.get("board") or ""),
            )
            known = self.hardware_class(cid)
            if known is None or (cls.description and known.description != cls.description):
                self.upsert_class(cls)  # not rewritten when unchanged: no row lock per birth
        accels = hw.get("accelerators") or []
        accel = ",".join(f"{a.get('kind')}:{a.get('device')}" for a in accels) or (
            "cpu" if hw else None
        )
        return self.upsert_device(
            device_id,
            hardware_class=cid,
            board=hw.get("board_id"),
            accelerator=accel,
            runtime=rt_name,
            runtime_version=rt.get("version"),
            online=bool(state.get("online")),
            state=state if hw else None,
            last_seen=now,
        )

    def device(self, device_id: str) -> Device | None:
        rows = self._all("SELECT * FROM devices WHERE id = ?", (device_id,))
        return self._device(rows[0]) if rows else None

    def devices(self, class_id: str | None = None) -> list[Device]:
        if class_id is None:
            rows = self._all("SELECT * FROM devices ORDER BY id")
        else:
            rows = self._all(
                "SELECT * FROM devices WHERE hardware_class = ? ORDER BY id", (class_id,)
            )
        return [self._device(r) for r in rows]

    @staticmethod
    def _device(r: Row) -> Device:
        d = dict(r)
        d["online"] = bool(d["online"])
        d["state"] = json.loads(d["state"])
        return Device(**d)

    # ---- models and variants -----------------------------------------------------------------
    def add_model(self, model: ModelRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO models VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                "source_path = excluded.source_path, source_sha256 = excluded.source_sha256, "
                "float_metrics = excluded.float_metrics",
                (model.name, model.source_path, model.source_sha256, dumps(model.float_metrics)),
            )

    def model(self, name: str) -> ModelRow | None:
        rows = self._all("SELECT * FROM models WHERE name = ?", (name,))
        if not rows:
            return None
        d = dict(rows[0])
        d["float_metrics"] = json.loads(d["float_metrics"])
        return ModelRow(**d)

    def model_names(self) -> list[str]:
        """Every model with a row or a variant."""
        rows = self._all("SELECT name FROM models UNION SELECT model FROM variants ORDER BY 1")
        return [str(r[0]) for r in rows]

    def add_variant(self, v: Variant) -> None:
        """Insert or replace a variant (same id = same content: a re-conversion is a no-op)."""
        with self._tx() as db:
            db.execute(
                f"INSERT INTO variants ({', '.join(VARIANT_COLUMNS)}) VALUES "
                f"({','.join('?' * len(VARIANT_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in VARIANT_COLUMNS[1:]),
                (
                    v.id,
                    v.model,
                    v.recipe,
                    v.path,
                    v.sha256,
                    v.size,
                    v.quantization,
                    v.accuracy,
                    v.agreement,
                    v.snr_db,
                    dumps(v.operators),
                    dumps(v.min_runtime),
                    v.conversion_s,
                    int(v.available),
                    v.unavailable_reason,
                ),
            )

    @staticmethod
    def _variant(r: Row) -> Variant:
        d = dict(r)
        d["operators"] = json.loads(d["operators"])
        d["min_runtime"] = json.loads(d["min_runtime"])
        d["available"] = bool(d["available"])
        return Variant(**d)

    def variant(self, variant_id: str) -> Variant | None:
        rows = self._all("SELECT * FROM variants WHERE id = ?", (variant_id,))
        return self._variant(rows[0]) if rows else None

    def variant_by_sha(self, sha256: str) -> Variant | None:
        rows = self._all("SELECT * FROM variants WHERE sha256 = ? LIMIT 1", (sha256,))
        return self._variant(rows[0]) if rows else None

    def variants_for(self, model: str) -> list[Variant]:
        rows = self._all("SELECT * FROM variants WHERE model = ? ORDER BY recipe, id", (model,))
        return [self._variant(r) for r in rows]

    # ---- releases -------------------------------------------------------------------------------
    def next_release(self, name: str, *, at_least: int = 1) -> int:
        """Allocate the next release counter of model ``name`` (persisted, strictly increasing).
        ``at_least`` lifts the counter past a release a device already accepted."""
        floor = max(1, at_least)
        with self._tx() as db:  # one statement: atomic on both engines, even across hosts
            row = db.execute(
                "INSERT INTO releases VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET counter = "
                "CASE WHEN releases.counter + 1 > ? THEN releases.counter + 1 ELSE ? END "
                "RETURNING counter",
                (name, floor, floor, floor),
            ).fetchone()
            return int(row[0])

    # ---- deployments ----------------------------------------------------------------------------
    def record_deployment(
        self,
        device: str,
        variant: str,
        release: int,
        manifest_sha256: str,
        *,
        started: float | None = None,
    ) -> int:
        dev = self.device(device)
        cid = dev.hardware_class if dev else None
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO deployments (device, class_id, variant, release, manifest_sha256, "
                "started) VALUES (?,?,?,?,?,?) RETURNING id",
                (device, cid, variant, release, manifest_sha256, now_or(started)),
            )
            return int(cur.fetchone()[0])

    def finish_deployment(
        self,
        deployment_id: int,
        outcome: str,
        reason: str | None = None,
        *,
        finished: float | None = None,
    ) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"deployment outcome {outcome!r} is not one of {OUTCOMES}")
        with self._tx() as db:
            db.execute(
                "UPDATE deployments SET outcome = ?, reason = ?, finished = ? WHERE id = ?",
                (outcome, reason, now_or(finished), deployment_id),
            )

    def deployment(self, deployment_id: int) -> Deployment | None:
        rows = self._all("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        return Deployment(**dict(rows[0])) if rows else None

    def deployments_for(self, class_id: str, model: str) -> list[Deployment]:
        rows = self._all(
            "SELECT d.* FROM deployments d JOIN variants v ON v.id = d.variant "
            "WHERE d.class_id = ? AND v.model = ? ORDER BY d.id",
            (class_id, model),
        )
        return [Deployment(**dict(r)) for r in rows]

    def rolled_back_variants(self, class_id: str, model: str) -> dict[str, str]:
        """Variants of ``model`` rolled back on a device of ``class_id``: variant id -> reason."""
        return {
            d.variant: d.reason or "rolled back"
            for d in self.deployments_for(class_id, model)
            if d.outcome == "rolled_back"
        }

    # ---- telemetry ------------------------------------------------------------------------------
    def record_telemetry(self, device: str, record: Mapping[str, Any] | Telemetry) -> bool:
        """Store one telemetry window; False when ``(device, seq)`` was already stored
        (at-least-once delivery). A decoded record is parsed as the agent's
        :class:`~agent.wire.status.Telemetry` (ProtocolError when it is not one)."""
        t = record if isinstance(record, Telemetry) else Telemetry.from_dict(record)
        dev = self.device(device)
        w = window_row(device, dev.hardware_class if dev else None, t)
        with self._tx() as db:
            cur = db.execute(WINDOW_INSERT, w.as_tuple())
            if dev is not None:
                db.execute(TOUCH_LAST_SEEN, (w.ts, device, w.ts))
            return bool(cur.rowcount == 1)

    def windows(self, class_id: str, sha256: str, since: float | None = None) -> list[WindowRow]:
        rows = self._all(
            "SELECT device, seq, class_id, model_sha256, ts, inferences, errors, p50_ms, p95_ms, "
            "rss_mb, peak_rss_mb, mj_per_inference, energy_measured, temp_c, throttled, window_s, "
            "energy_basis FROM telemetry_windows "
            "WHERE class_id = ? AND model_sha256 = ? AND ts >= ? ORDER BY ts, device, seq",
            (class_id, sha256, since if since is not None else float("-inf")),
        )
        return [WindowRow(*tuple(r)) for r in rows]

    def class_stats(
        self, class_id: str, variant: str, since: float | None = None, *, recent: int = 5
    ) -> Stats:
        """Roll-up of ``variant`` (a variant id, or a model sha256) on ``class_id``."""
        v = self.variant(variant)
        sha = v.sha256 if v else variant
        return rollup(class_id, variant, self.windows(class_id, sha, since), recent=recent)
