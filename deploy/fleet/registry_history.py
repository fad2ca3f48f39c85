"""The registry's history: optimizer decisions (with their evidence) and rollouts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deploy.fleet.registry_db import RegistryDB, dumps, now_or
from deploy.fleet.registry_types import DecisionRow, RolloutDevice, RolloutRow


class RegistryHistory(RegistryDB):
    # ---- decisions ------------------------------------------------------------------------------
    def record_decision(
        self,
        model: str,
        class_id: str,
        *,
        action: str,
        variant: str | None,
        reason: str,
        evidence: Mapping[str, Any],
        ts: float | None = None,
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO decisions (ts, model, class_id, action, variant, reason, evidence) "
                "VALUES (?,?,?,?,?,?,?) RETURNING id",
                (now_or(ts), model, class_id, action, variant, reason, dumps(dict(evidence))),
            )
            return int(cur.fetchone()[0])

    def decisions(self, model: str, class_id: str | None = None) -> list[DecisionRow]:
        sql, args = "SELECT * FROM decisions WHERE model = ?", [model]
        if class_id is not None:
            sql, args = sql + " AND class_id = ?", [model, class_id]
        rows = self._all(sql + " ORDER BY id", tuple(args))
        return [DecisionRow(**(dict(r) | {"evidence": json.loads(r["evidence"])})) for r in rows]

    # ---- rollouts -------------------------------------------------------------------------------
    def create_rollout(
        self,
        model: str,
        variant: str,
        *,
        class_id: str | None,
        state: str,
        waves: list[Any],
        counts: Mapping[str, Any],
        plan: Mapping[str, Any],
        now: float | None = None,
    ) -> int:
        t = now_or(now)
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO rollouts (model, variant, class_id, state, waves, counts, plan, "
                "created, updated) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    model,
                    variant,
                    class_id,
                    state,
                    dumps(waves),
                    dumps(dict(counts)),
                    dumps(dict(plan)),
                    t,
                    t,
                ),
            )
            return int(cur.fetchone()[0])

    def update_rollout(
        self,
        rollout_id: int,
        *,
        state: str,
        counts: Mapping[str, Any],
        plan: Mapping[str, Any],
        now: float | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE rollouts SET state = ?, counts = ?, plan = ?, updated = ? WHERE id = ?",
                (state, dumps(dict(counts)), dumps(dict(plan)), now_or(now), rollout_id),
            )

    def rollout(self, rollout_id: int) -> RolloutRow | None:
        rows = self._all("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        if not rows:
            return None
        d = dict(rows[0])
        for key in ("waves", "counts", "plan"):
            d[key] = json.loads(d[key])
        return RolloutRow(**d)

    def set_rollout_device(
        self,
        rollout_id: int,
        device: str,
        *,
        wave: int,
        state: str,
        reason: str | None = None,
        now: float | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rollout_devices VALUES (?,?,?,?,?,?) ON CONFLICT(rollout, device) "
                "DO UPDATE SET state = excluded.state, reason = excluded.reason, "
                "updated = excluded.updated",
                (rollout_id, device, wave, state, reason, now_or(now)),
            )

    def rollout_devices(self, rollout_id: int) -> list[RolloutDevice]:
        rows = self._all(
            "SELECT * FROM rollout_devices WHERE rollout = ? ORDER BY wave, device", (rollout_id,)
        )
        return [RolloutDevice(**dict(r)) for r in rows]
