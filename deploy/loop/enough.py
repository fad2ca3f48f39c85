"""When a (class, variant) roll-up is enough to judge (pure; re-exported by the optimizer)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.wire.record import Record
from deploy.fleet.registry_types import Stats


@dataclass(frozen=True)
class EnoughRule(Record):
    """When a (class, variant) roll-up is enough to judge: windows, inferences, and a stable
    temperature (the last ``temp_windows`` windows within ``max_temp_spread_c``)."""

    min_windows: int = 3
    min_inferences: int = 100
    temp_windows: int = 3
    max_temp_spread_c: float = 2.0


def enough_telemetry(stats: Stats | None, rule: EnoughRule = EnoughRule()) -> tuple[bool, str]:
    """(enough, why) for one roll-up."""
    if stats is None or stats.windows == 0:
        return False, "no telemetry yet"
    if stats.windows < rule.min_windows:
        return False, f"{stats.windows}/{rule.min_windows} windows"
    if stats.inferences < rule.min_inferences:
        return False, f"{stats.inferences}/{rule.min_inferences} inferences"
    temps = stats.recent_temps_c[-rule.temp_windows :]
    if len(temps) >= 2 and max(temps) - min(temps) >= rule.max_temp_spread_c:
        spread = max(temps) - min(temps)
        return (
            False,
            f"temperature still moving ({spread:.1f} C over the last {len(temps)} windows)",
        )
    return True, f"{stats.windows} windows, {stats.inferences} inferences, temperature stable"
