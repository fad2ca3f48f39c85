"""Raspberry Pi 5 PMIC (Renesas DA9091) rail telemetry via ``vcgencmd pmic_read_adc``.

The firmware prints one ADC channel per line, currents and voltages separately::

     3V7_WL_SW_A current(0)=0.00390372A
     3V7_WL_SW_V volt(8)=3.74346440V
        EXT5V_V volt(24)=5.08530000V

A rail's power is V x I of its ``_V`` and ``_A`` lines; the board figure is the sum over rails that
have both. ``EXT5V`` (USB-C input) and ``BATT`` (RTC cell) have voltage only and are reported but
not summed. The sum covers the PMIC's output rails only: conversion losses and power drawn
straight from 5 V (USB ports, fan, HATs) are not in it, so it reads below a USB meter.

Variants handled: the rail names changed between firmware releases (``0V8_SYS`` became
``0V8_SW``), so pairing goes by name, never by channel number or line order; leading
spaces vary; the mailbox interface separates lines with NULs; values may read ``nan``; a board
without the PMIC answers ``error=1 error_msg="Command not registered"``.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.energy.base import GARBAGE, UNSUPPORTED, Meter, Sample, meter_error, register

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], str]

_LINE = re.compile(
    r"^\s*(?P<rail>\S+?)_(?P<kind>[AV])\s+(?:current|volt)\s*(?:\(\s*\d+\s*\))?\s*=\s*"
    r"(?P<value>[-+0-9.eE]+|nan|inf)\s*(?P<unit>[AV])?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PmicReading:
    """The parsed output: rails with both V and A, and voltage-only channels."""

    rails: dict[str, tuple[float, float]]  # rail -> (volts, amps)
    voltage_only: dict[str, float] = field(default_factory=dict)
    current_only: dict[str, float] = field(default_factory=dict)

    @property
    def total_w(self) -> float:
        return sum(v * a for v, a in self.rails.values())

    @property
    def input_v(self) -> float | None:
        return self.voltage_only.get("EXT5V")

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_w": self.total_w,
            "input_v": self.input_v,
            "rails": {r: {"v": v, "a": a, "w": v * a} for r, (v, a) in sorted(self.rails.items())},
            "voltage_only": dict(sorted(self.voltage_only.items())),
            "current_only": dict(sorted(self.current_only.items())),
        }


def parse_pmic(text: str) -> PmicReading:
    """Parse ``pmic_read_adc`` output; MeterError if the firmware refused or no rail pairs up."""
    if "error_msg" in text or re.search(r"^\s*error=\d", text, re.MULTILINE):
        raise meter_error(
            UNSUPPORTED,
            f"vcgencmd pmic_read_adc is not supported here ({text.strip()[:80]})",
            "only the Raspberry Pi 5 (and CM5/Pi 500) has a PMIC with current sensing",
        )
    volts: dict[str, float] = {}
    amps: dict[str, float] = {}
    for line in text.replace("\x00", "\n").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        value = float(m.group("value"))
        if not math.isfinite(value):
            continue
        (amps if m.group("kind").upper() == "A" else volts)[m.group("rail")] = value
    paired = {r: (volts[r], amps[r]) for r in volts.keys() & amps.keys()}
    if not paired:
        raise meter_error(
            GARBAGE,
            f"pmic_read_adc output has no rail with both a voltage and a current"
            f" ({len(volts)} voltage and {len(amps)} current lines)",
            "update the firmware (rpi-eeprom / rpi-update) or report the output format",
        )
    return PmicReading(
        rails=paired,
        voltage_only={r: v for r, v in volts.items() if r not in amps},
        current_only={r: a for r, a in amps.items() if r not in volts},
    )


def run_command(args: Sequence[str]) -> str:
    """Run a command and return its stdout; MeterError when it cannot run or fails."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=5, check=False)
    except FileNotFoundError as exc:
        raise meter_error(
            UNSUPPORTED,
            f"{args[0]} not found",
            "install libraspberrypi-bin / raspi-utils or pass ?cmd=/path/to/vcgencmd",
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise meter_error(GARBAGE, f"running {' '.join(args)} failed: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        raise meter_error(
            UNSUPPORTED,
            f"{' '.join(args)} exited {proc.returncode}: {output[:120]}",
            "the user needs access to /dev/vcio (group 'video')",
        )
    return proc.stdout


@register
class Pi5PmicMeter(Meter):
    """``pi5_pmic[?cmd=/usr/bin/vcgencmd&interval=1]``; ``runner`` replaces the command in tests."""

    kind: ClassVar[str] = "pi5_pmic"
    default_interval_s: ClassVar[float] = 1.0
    option_help: ClassVar[dict[str, str]] = {"cmd": "the vcgencmd to run (default: vcgencmd)"}

    def __init__(
        self,
        arg: str = "",
        options: dict[str, str] | None = None,
        *,
        runner: Runner | None = None,
    ) -> None:
        super().__init__(arg, options)
        self.command = [self.options.get("cmd", "vcgencmd"), "pmic_read_adc"]
        self.runner: Runner = runner or run_command
        self.last: PmicReading | None = None

    def read(self) -> list[Sample]:
        t0 = time.monotonic()
        text = self.runner(self.command)
        t1 = time.monotonic()
        self.last = parse_pmic(text)
        return [Sample((t0 + t1) / 2, self.last.total_w)]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["last"] = self.last.to_dict() if self.last else None
        return out
