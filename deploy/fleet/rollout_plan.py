"""Staged rollout as a pure state machine: canary, then waves, abort on failures or timeout.

The plan never talks to devices. The caller asks it what to do (:class:`Step`: devices to
notify, devices to roll back) and feeds it each device's outcome and the clock:

    plan = RolloutPlan(devices, RolloutPolicy(waves=("25%", "100%")))
    step = plan.start(now)                      # notify the canary
    step = plan.record("pi-03", "committed", now)  # -> maybe the next wave to notify
    step = plan.tick(now)                       # -> abort when the wave timed out

Rules: the first ``canary`` devices form wave 0, and any canary failure aborts. Each later wave
is a count (``3``) or a percentage of all devices (``"25%"``, rounded up); devices left after
the listed waves form one last wave. A wave advances when every device in it has reported and
at least ``success_ratio`` of it committed (else abort). At any time, more than
``max_failure_ratio`` of the notified devices failed (or more than ``max_failures``) aborts, and
so does a wave not complete within ``wave_timeout_s``. After an abort no device is notified
again, and the step lists the devices to roll back: those that committed and those notified that
have not reported (they may still commit); a commit reported after the abort is returned for
roll-back by that ``record`` call. ``to_dict``/``from_dict`` let the registry persist the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import ConfigError

SUCCESS = ("committed",)
FAILURE = ("rolled_back", "rejected", "failed", "timeout")
STATES = ("pending", "canary", "waves", "done", "aborted")


@dataclass(frozen=True)
class RolloutPolicy:
    canary: int = 1
    waves: tuple[int | str, ...] = ("25%", "100%")
    success_ratio: float = 1.0
    max_failure_ratio: float = 0.2
    max_failures: int | None = None
    wave_timeout_s: float = 600.0

    def validate(self, n_devices: int) -> None:
        errors = []
        if self.canary < 1:
            errors.append(f"canary must be >= 1, got {self.canary}")
        for w in self.waves:
            try:
                if wave_size(w, n_devices) < 1:
                    errors.append(f"wave {w!r} selects no device")
            except ValueError as exc:
                errors.append(str(exc))
        if not 0.0 < self.success_ratio <= 1.0:
            errors.append(f"success_ratio must be in (0, 1], got {self.success_ratio}")
        if not 0.0 <= self.max_failure_ratio < 1.0:
            errors.append(f"max_failure_ratio must be in [0, 1), got {self.max_failure_ratio}")
        if self.max_failures is not None and self.max_failures < 0:
            errors.append(f"max_failures must be >= 0, got {self.max_failures}")
        if self.wave_timeout_s <= 0:
            errors.append(f"wave_timeout_s must be > 0, got {self.wave_timeout_s}")
        if n_devices < 1:
            errors.append("no device to roll out to")
        if errors:
            raise ConfigError(
                "rollout policy: " + "; ".join(errors), hint="fix the rollout options"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"waves": list(self.waves)}


def wave_size(spec: int | str, total: int) -> int:
    """``3`` -> 3 devices, ``"25%"`` -> ceil(25 % of total); ValueError when malformed."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.ceil(total * pct / 100.0))
        return int(text)
    except ValueError:
        raise ValueError(f"wave {spec!r} is neither a count nor a percentage like '25%'") from None


@dataclass(frozen=True)
class Step:
    """What the caller must do now."""

    notify: tuple[str, ...] = ()
    rollback: tuple[str, ...] = ()
    state: str = "pending"
    wave: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"notify": list(self.notify), "rollback": list(self.rollback)}


@dataclass
class RolloutPlan:
    devices: list[str]
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    state: str = "pending"
    wave: int = -1
    wave_started: float | None = None
    status: dict[str, str] = field(default_factory=dict)  # device -> notified|<outcome>
    reasons: dict[str, str] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)  # roll-backs already returned
    abort_reason: str | None = None
    waves: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError("rollout: a device is listed twice", hint="deduplicate the devices")
        self.policy.validate(len(self.devices))
        if not self.waves:
            self.waves = self._split()

    def _split(self) -> list[list[str]]:
        rest = list(self.devices)
        waves = [rest[: self.policy.canary]]
        rest = rest[self.policy.canary :]
        for spec in self.policy.waves:
            if not rest:
                break
            n = wave_size(spec, len(self.devices))
            waves.append(rest[:n])
            rest = rest[n:]
        if rest:
            waves.append(rest)
        return waves

    # ---- queries --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        values = list(self.status.values())
        return {
            "total": len(self.devices),
            "notified": len(values),
            "committed": sum(v in SUCCESS for v in values),
            "failed": sum(v in FAILURE for v in values),
            "pending": values.count("notified"),
        }

    def moved(self) -> list[str]:
        """Devices that may be running the new variant (committed or not reported yet)."""
        return [d for d in self.devices if self.status.get(d) in ("notified", *SUCCESS)]

    def _step(
        self, notify: Sequence[str] = (), rollback: Sequence[str] = (), reason: str = ""
    ) -> Step:
        return Step(tuple(notify), tuple(rollback), self.state, max(self.wave, 0), reason)

    # ---- transitions ----------------------------------------------------------------------------
    def start(self, now: float) -> Step:
        if self.state != "pending":
            return self._step(reason=f"already {self.state}")
        self.state = "canary"
        return self._notify_wave(0, now)

    def _notify_wave(self, index: int, now: float) -> Step:
        self.wave, self.wave_started = index, now
        if index > 0:
            self.state = "waves"
        for d in self.waves[index]:
            self.status[d] = "notified"
        name = "canary" if index == 0 else f"wave {index}"
        return self._step(self.waves[index], reason=f"{name}: {len(self.waves[index])} device(s)")

    def abort(self, reason: str) -> Step:
        """Stop: nothing more is notified; returns the devices to roll back."""
        if self.state in ("done", "aborted"):
            return self._step(reason=f"already {self.state}")
        self.state, self.abort_reason = "aborted", reason
        todo = [d for d in self.moved() if d not in self.rolled_back]
        self.rolled_back.extend(todo)
        return self._step(rollback=todo, reason=f"aborted: {reason}")

    def record(self, device: str, outcome: str, now: float, reason: str = "") -> Step:
        """Feed one device's outcome (``committed`` or one of FAILURE)."""
        if outcome not in SUCCESS + FAILURE:
            raise ValueError(f"unknown rollout outcome {outcome!r}")
        if self.status.get(device) != "notified":
            return self._step(reason=f"ignored {outcome} from {device}: not awaiting it")
        self.status[device] = outcome
        if reason:
            self.reasons[device] = reason
        if self.state == "aborted":
            late = [device] if outcome in SUCCESS and device not in self.rolled_back else []
            self.rolled_back.extend(late)
            return self._step(rollback=late, reason="late outcome after abort")
        c = self.counts()
        failed = outcome in FAILURE
        if failed and self.wave == 0:
            return self.abort(f"canary {device} failed: {reason or outcome}")
        if failed and c["failed"] > self.policy.max_failure_ratio * c["notified"]:
            return self.abort(
                f"{c['failed']} of {c['notified']} notified devices failed "
                f"(> {self.policy.max_failure_ratio:.0%}); last {device}: "
                f"{reason or outcome}"
            )
        if self.policy.max_failures is not None and c["failed"] > self.policy.max_failures:
            return self.abort(f"{c['failed']} failures > max {self.policy.max_failures}")
        return self._maybe_advance(now)

    def _maybe_advance(self, now: float) -> Step:
        wave = self.waves[self.wave]
        if any(self.status.get(d) == "notified" for d in wave):
            return self._step(reason="waiting for the wave")
        ok = sum(self.status.get(d) in SUCCESS for d in wave)
        if ok < self.policy.success_ratio * len(wave):
            return self.abort(
                f"wave {self.wave}: {ok}/{len(wave)} committed, below the success "
                f"ratio {self.policy.success_ratio:.0%}"
            )
        if self.wave + 1 < len(self.waves):
            return self._notify_wave(self.wave + 1, now)
        self.state = "done"
        return self._step(reason=f"done: {self.counts()['committed']} device(s) committed")

    def tick(self, now: float) -> Step:
        """Abort when the current wave has been waiting longer than ``wave_timeout_s``."""
        if self.state not in ("canary", "waves") or self.wave_started is None:
            return self._step()
        if now - self.wave_started <= self.policy.wave_timeout_s:
            return self._step(reason="waiting for the wave")
        silent = [d for d in self.waves[self.wave] if self.status.get(d) == "notified"]
        return self.abort(
            f"wave {self.wave} timed out after {self.policy.wave_timeout_s:g} s; "
            f"no outcome from {', '.join(silent)}"
        )

    # ---- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "policy": self.policy.to_dict(),
            "state": self.state,
            "wave": self.wave,
            "wave_started": self.wave_started,
            "status": dict(self.status),
            "reasons": dict(self.reasons),
            "rolled_back": list(self.rolled_back),
            "abort_reason": self.abort_reason,
            "waves": [list(w) for w in self.waves],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        pol = dict(data["policy"])
        pol["waves"] = tuple(pol.get("waves", ()))
        return cls(
            devices=list(data["devices"]),
            policy=RolloutPolicy(**pol),
            state=data["state"],
            wave=int(data["wave"]),
            wave_started=data.get("wave_started"),
            status=dict(data["status"]),
            reasons=dict(data.get("reasons", {})),
            rolled_back=list(data.get("rolled_back", [])),
            abort_reason=data.get("abort_reason"),
            waves=[list(w) for w in data["waves"]],
        )
