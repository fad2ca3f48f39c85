"""Cheap thermal and throttling snapshot, taken with every telemetry window and benchmark.

SoC temperature, cpu0 frequency and governor, the Raspberry Pi firmware's throttling bits
(``vcgencmd get_throttled``, decoded into what is happening now and what has happened since
boot) and the Edge TPU temperatures from the apex driver. Everything is read under the same
hardware root as :mod:`agent.board.hardware`. Under a captured tree (root other than ``/``) the
``vcgencmd get_throttled`` output is read from ``<root>/.captured/vcgencmd_get_throttled``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.board.hardware import thermal_zones
from agent.board.hwroot import HwRoot
from agent.wire.record import Record

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs a command (argv) and returns its stdout, or None when it cannot run or fails."""

    def __call__(self, argv: Sequence[str], /) -> str | None: ...


CAPTURED_THROTTLED = ".captured/vcgencmd_get_throttled"

PREFERRED_ZONE_TYPES = ("cpu_thermal", "soc_thermal", "x86_pkg_temp")
"""Zone types that measure the SoC / CPU package (``-`` and ``_`` are treated alike)."""

THROTTLE_FLAGS = {
    0: "under-voltage",
    1: "arm-frequency-capped",
    2: "throttled",
    3: "soft-temperature-limit",
}
"""Bits of ``get_throttled`` happening now; the same flag at bit + 16 has occurred since boot."""

_THROTTLED_RE = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")


@dataclass(frozen=True)
class ThermalState(Record):
    temp_c: float | None
    freq_mhz: float | None
    governor: str | None
    throttled: int | None
    throttled_now: list[str]
    throttled_since_boot: list[str]
    coral_temps_c: list[float]
    temp_source: str | None = None  # thermal zone type the temperature came from
    throttled_hex: str | None = field(default=None)


def decode_throttled(bits: int) -> tuple[list[str], list[str]]:
    """Split ``get_throttled`` bits into (happening now, has occurred since boot)."""
    now = [name for bit, name in THROTTLE_FLAGS.items() if bits & (1 << bit)]
    since = [name for bit, name in THROTTLE_FLAGS.items() if bits & (1 << (bit + 16))]
    return now, since


def parse_throttled(text: str | None) -> int | None:
    """``throttled=0x50005`` -> 0x50005; anything else -> None."""
    m = _THROTTLED_RE.search(text or "")
    return int(m.group(1), 0) if m else None


def run_command(argv: Sequence[str]) -> str | None:
    """The default runner: a short subprocess with a timeout; failures become None."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=2.0, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        log.debug("%s exited %s: %s", argv[0], done.returncode, done.stderr.strip())
        return None
    return done.stdout


def snapshot(
    root: str | Path = "/", *, runner: Runner | None = None, record: set[str] | None = None
) -> ThermalState:
    """Read the current thermal state under ``root``. Missing sources give None / [].

    ``runner`` replaces the subprocess that runs ``vcgencmd get_throttled`` (tests);
    ``record`` collects the files found, as in :func:`agent.board.hardware.detect`.
    """
    hw = HwRoot(root, record=record)
    temp_c, source = _soc_temp(hw)
    khz = hw.read_int("sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    bits = parse_throttled(_throttled_output(hw, runner))
    now, since = decode_throttled(bits) if bits is not None else ([], [])
    return ThermalState(
        temp_c=temp_c,
        freq_mhz=khz / 1000.0 if khz else None,
        governor=hw.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or None,
        throttled=bits,
        throttled_now=now,
        throttled_since_boot=since,
        coral_temps_c=_coral_temps(hw),
        temp_source=source,
        throttled_hex=hex(bits) if bits is not None else None,
    )


def _soc_temp(hw: HwRoot) -> tuple[float | None, str | None]:
    zones = [z for z in thermal_zones(hw) if z["temp_c"] is not None]
    for wanted in PREFERRED_ZONE_TYPES:
        for zone in zones:
            if (zone["type"] or "").replace("-", "_") == wanted:
                return zone["temp_c"], zone["type"]
    if zones:
        return zones[0]["temp_c"], zones[0]["type"]
    return None, None


def _throttled_output(hw: HwRoot, runner: Runner | None) -> str | None:
    if runner is not None:
        return runner(["vcgencmd", "get_throttled"])
    if not hw.is_system_root:
        return hw.read(CAPTURED_THROTTLED)
    exe = shutil.which("vcgencmd")
    if exe is None and hw.exists("usr/bin/vcgencmd"):
        exe = "/usr/bin/vcgencmd"
    return run_command([exe, "get_throttled"]) if exe else None


def _coral_temps(hw: HwRoot) -> list[float]:
    temps = []
    names = [n for n in hw.listdir("sys/class/apex") if re.fullmatch(r"apex_\d+", n)]
    for name in sorted(names, key=lambda n: int(n[len("apex_") :])):
        millic = hw.read_int(f"sys/class/apex/{name}/temp")
        if millic is not None:
            temps.append(round(millic / 1000.0, 2))
    return temps
