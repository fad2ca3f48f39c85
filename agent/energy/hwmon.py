"""Linux hwmon power and energy sensors: ``/sys/class/hwmon/hwmonN/power*_input`` (microwatts)
and ``energy*_input`` (microjoules, cumulative).

``hwmon:/sys/class/hwmon/hwmon2`` uses the first ``power*_input`` (or, if none, the first
``energy*_input``); ``?sensor=energy1`` picks one. The directory number can change across
reboots; ``?name=ina3221`` instead finds the hwmon directory under ARG whose ``name`` matches
(ARG then defaults to ``/sys/class/hwmon``).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, ClassVar

from agent.energy.base import GONE, UNSUPPORTED, EnergyCounter, Meter, Sample, meter_error, register
from agent.errors import ConfigError

log = logging.getLogger(__name__)

_SENSOR = re.compile(r"^(power|energy)(\d+)$")


def read_int(path: Path) -> int:
    """An integer sysfs attribute, or MeterError(meter_gone / meter_unsupported)."""
    try:
        text = path.read_text().strip()
    except PermissionError as exc:
        raise meter_error(
            UNSUPPORTED,
            f"{path} is not readable by this user",
            "run the agent as a user allowed to read it (RAPL energy is root-only since 2020)",
        ) from exc
    except OSError as exc:
        raise meter_error(GONE, f"cannot read {path}: {exc}", "the sensor disappeared?") from exc
    try:
        return int(text)
    except ValueError as exc:
        raise meter_error(GONE, f"{path} holds {text[:40]!r}, not an integer") from exc


def _sensor_files(directory: Path) -> list[str]:
    found = []
    for kind in ("power", "energy"):
        numbered = []
        for p in directory.glob(f"{kind}*_input"):
            m = _SENSOR.match(p.name.removesuffix("_input"))
            if m:
                numbered.append((int(m.group(2)), m.group(0)))
        found += [name for _, name in sorted(numbered)]
    return found


@register
class HwmonMeter(Meter):
    """``hwmon:/sys/class/hwmon/hwmonN[?sensor=power1|energy1][&name=CHIP]``."""

    kind: ClassVar[str] = "hwmon"
    default_interval_s: ClassVar[float] = 0.5
    option_help: ClassVar[dict[str, str]] = {
        "sensor": "powerN or energyN (default: first power*_input, else first energy*_input)",
        "name": "find the hwmon directory whose 'name' file holds this (under ARG)",
    }

    def __init__(self, arg: str = "", options: dict[str, str] | None = None) -> None:
        super().__init__(arg, options)
        self.name = self.options.get("name")
        if not arg and not self.name:
            raise ConfigError("hwmon meter needs a directory, e.g. hwmon:/sys/class/hwmon/hwmon2")
        self.sensor = self.options.get("sensor")
        if self.sensor is not None and not _SENSOR.match(self.sensor):
            raise ConfigError(f"hwmon: sensor={self.sensor!r} is not powerN or energyN")
        self._path: Path | None = None
        self._counter = EnergyCounter()

    def _resolve(self) -> Path:
        base = Path(self.arg or "/sys/class/hwmon")
        directory = base
        if self.name is not None:
            matches = [d for d in sorted(base.glob("hwmon*")) if _read_name(d) == self.name]
            if not matches:
                raise meter_error(GONE, f"no hwmon device named {self.name!r} under {base}")
            directory = matches[0]
        if not directory.is_dir():
            raise meter_error(GONE, f"hwmon directory {directory} does not exist")
        sensor = self.sensor
        if sensor is None:
            files = _sensor_files(directory)
            if not files:
                raise meter_error(
                    UNSUPPORTED,
                    f"{directory} ({_read_name(directory) or 'unnamed'}) has no power*_input or"
                    " energy*_input",
                    "pick the hwmon directory of a power sensor (cat /sys/class/hwmon/*/name)",
                )
            sensor = files[0]
        path = directory / f"{sensor}_input"
        log.info("hwmon meter reads %s", path)
        return path

    def close(self) -> None:
        self._path = None
        self._counter.reset()

    def read(self) -> list[Sample]:
        if self._path is None:
            self._path = self._resolve()
        value = read_int(self._path)
        now = time.monotonic()
        if self._path.name.startswith("power"):
            return [Sample(now, value / 1e6)]
        return self._counter.update(now, value)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["path"] = str(self._path) if self._path else None
        return out


def _read_name(directory: Path) -> str | None:
    try:
        return (directory / "name").read_text().strip()
    except OSError:
        return None
