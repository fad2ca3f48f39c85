"""Linux powercap (Intel RAPL, and AMD via the same interface) energy counters.

``powercap:/sys/class/powercap/intel-rapl:0`` reads ``energy_uj`` (cumulative microjoules) and
``max_energy_range_uj`` (where the counter wraps back to 0); power is the counter's difference
over time, with wrap-around added back. The package domain (``intel-rapl:0``) covers the CPU
package only, not the whole machine; ``energy_uj`` is readable by root only on kernels patched
for CVE-2020-8694.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

from agent.energy.base import GONE, EnergyCounter, Meter, Sample, meter_error, register
from agent.energy.hwmon import read_int
from agent.errors import ConfigError

log = logging.getLogger(__name__)


@register
class PowercapMeter(Meter):
    """``powercap:/sys/class/powercap/intel-rapl:0``."""

    kind: ClassVar[str] = "powercap"
    default_interval_s: ClassVar[float] = 0.5
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, arg: str = "", options: dict[str, str] | None = None) -> None:
        super().__init__(arg, options)
        if not arg:
            raise ConfigError(
                "powercap meter needs a zone, e.g. powercap:/sys/class/powercap/intel-rapl:0"
            )
        self.zone = Path(arg)
        self._counter: EnergyCounter | None = None
        self.domain: str | None = None

    def close(self) -> None:
        self._counter = None

    def read(self) -> list[Sample]:
        if self._counter is None:
            if not (self.zone / "energy_uj").exists():
                raise meter_error(GONE, f"{self.zone}/energy_uj does not exist")
            wrap = read_int(self.zone / "max_energy_range_uj")
            self._counter = EnergyCounter(wrap_uj=wrap)
            try:
                self.domain = (self.zone / "name").read_text().strip()
            except OSError:
                self.domain = None
            log.info("powercap meter reads %s (%s)", self.zone, self.domain)
        value = read_int(self.zone / "energy_uj")
        return self._counter.update(time.monotonic(), value)

    @property
    def wraps(self) -> int:
        return self._counter.wraps if self._counter else 0

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(domain=self.domain, wraps=self.wraps)
        return out
