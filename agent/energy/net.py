"""Energy per inference net of idle: what the model costs on top of the board sitting idle.

``net = (avg_w - idle_w) x (t1 - t0) / inferences x 1000`` (mJ). It is reported only when the
window's power is above idle by more than ``min_net_w`` (the meter's resolution, or the noise of
an estimate): at or below that, the estimate cannot separate the model from idle and the net
figure is ``None`` with a reason, never a negative or noise-sized number. A typical cause is an
idle baseline taken while the device was still busy starting up, or an estimate (power from CPU
utilisation) that moves less than its own noise between idle and serving.
"""

from __future__ import annotations

from typing import NamedTuple

MIN_NET_W = 0.02  # W: about the resolution of a USB power meter (UM25C: 1 mA x 5 V = 5 mW)


class NetEnergy(NamedTuple):
    mj_per_inference: float | None
    missing_reason: str | None


def net_energy(
    avg_w: float | None,
    idle_w: float | None,
    duration_s: float,
    inferences: int,
    min_net_w: float = MIN_NET_W,
) -> NetEnergy:
    """Net mJ per inference over a window, or ``None`` and why (never negative)."""
    if inferences <= 0:
        return NetEnergy(None, "no inferences in the window")
    if avg_w is None:
        return NetEnergy(None, "no power figure for the window")
    if idle_w is None:
        return NetEnergy(None, "no idle baseline yet (it needs a window without inferences)")
    above = avg_w - idle_w
    if above <= min_net_w:
        return NetEnergy(
            None,
            f"power {avg_w:.3f} W is not above idle {idle_w:.3f} W by more than {min_net_w:g} W:"
            " the model cannot be separated from idle",
        )
    return NetEnergy(above * duration_s / inferences * 1000.0, None)


def basis(gross: float | None, net: float | None) -> str | None:
    """Which figure stands for the window's energy per inference: net where one exists."""
    if net is not None:
        return "net"
    return "gross" if gross is not None else None
