"""Where a rollout stands, wave by wave: what ``edge-deploy rollout`` shows live.

:func:`snapshot` reads a :class:`~deploy.fleet.rollout_plan.RolloutPlan` plus what only the
runner knows (pushes still queued behind the in-flight limit, pushes withdrawn at an abort,
roll-backs under way) and returns a frozen :class:`Progress`; :func:`progress_line` is its
one-line text form (a line per update when stdout is not a terminal).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agent.wire.record import Record
from deploy.fleet.rollout_plan import FAILURE, SUCCESS, RolloutPlan


@dataclass(frozen=True)
class WaveProgress:
    index: int  # 0 is the canary
    size: int
    done: int  # committed
    failed: int
    pending: int  # announced, no verdict yet
    queued: int  # waiting behind the in-flight limit
    withdrawn: int  # queued at the abort: never notified

    @property
    def name(self) -> str:
        return "canary" if self.index == 0 else f"wave {self.index}"


@dataclass(frozen=True)
class Progress(Record):
    state: str  # canary | waves | done | aborted
    wave: int
    elapsed_s: float
    waves: tuple[WaveProgress, ...]
    rollback_pending: int
    rolled_back: int
    rollback_failed: int
    reason: str = ""


def snapshot(
    plan: RolloutPlan,
    queued: Collection[str],
    withdrawn: Collection[str],
    rollbacks: Mapping[str, str],
    elapsed_s: float,
) -> Progress:
    """The plan's per-wave counts; ``rollbacks`` maps a device to ``pending`` or its outcome."""
    gone = set(withdrawn)
    waves = []
    for k, wave in enumerate(plan.waves):
        status = [plan.status.get(d) for d in wave]
        q = sum(d in queued for d in wave)
        w = sum(d in gone for d in wave)
        waiting = status.count("notified")
        waves.append(
            WaveProgress(
                index=k,
                size=len(wave),
                done=sum(s in SUCCESS for s in status),
                failed=sum(s in FAILURE for s in status),
                pending=waiting - q - w,
                queued=q,
                withdrawn=w,
            )
        )
    states = list(rollbacks.values())
    pending = states.count("pending")
    ok = sum(s in ("committed", "duplicate") for s in states)
    return Progress(
        state=plan.state,
        wave=max(plan.wave, 0),
        elapsed_s=round(elapsed_s, 1),
        waves=tuple(waves),
        rollback_pending=pending,
        rolled_back=ok,
        rollback_failed=len(states) - pending - ok,
        reason=plan.abort_reason or "",
    )


def progress_line(p: Progress) -> str:
    """``12.3s waves: canary 1/1 ok | wave 1 200 done 3 failed 47 pending | ...``"""
    parts = []
    for w in p.waves[: p.wave + 1]:
        text = f"{w.name} {w.done}/{w.size} done, {w.failed} failed, {w.pending} pending"
        if w.queued:
            text += f", {w.queued} queued"
        if w.withdrawn:
            text += f", {w.withdrawn} withdrawn"
        parts.append(text)
    line = f"{p.elapsed_s:7.1f}s {p.state:<7} " + " | ".join(parts)
    if p.rollback_pending or p.rolled_back or p.rollback_failed:
        line += (
            f" | roll-back {p.rolled_back} done, {p.rollback_failed} failed, "
            f"{p.rollback_pending} pending"
        )
    if p.reason:
        line += f" ({p.reason})"
    return line
