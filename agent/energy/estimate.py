"""An estimate, not a measurement: board power from CPU utilisation.

``P = idle_w + (load_w - idle_w) * cpu_util`` with per-board constants from published whole-board
measurements at the USB input. Every figure from this meter says ``measured: false``. It ignores
frequency scaling, the GPU, USB devices, Wi-Fi traffic and an Edge TPU, so use it only to rank
variants on one board, never to size a battery.

Sources (each value as published; "rough" where no measurement was found):

- rpi4b: 2.7 W idle, 6.4 W at ``stress --cpu 4``: Jeff Geerling, pidramble.com "Power Consumption
  Benchmarks" (Pi 4 B, headless, idle = 5 min after boot, load ~0.00).
- rpi3bp: 1.9 W idle, 5.1 W at maximum CPU load: the same pidramble.com table (Pi 3 B+).
- rpi5: rough. No idle/stress pair was found in the sources searched. The geerlingguy/sbc-reviews
  issue 21 thread reports 1.8 W idle on one USB meter (called too low by others) and 7.9 W
  running Geekbench; 2.5 W idle and 7.9 W load are used.
- rpizero2w: idle 0.6 W from CNX Software, "A deep dive into Raspberry Pi Zero 2 W's power
  consumption" (2021-12-09: 120 mA at 5 V, Bullseye, Otii Arc). Full-load value not found: rough
  2.5 W.
- generic: rough 3.0 W idle / 8.0 W load (a typical single-board computer); replace it with a
  meter.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agent.energy.base import Meter, Sample, register
from agent.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoardPower:
    idle_w: float
    load_w: float
    source: str
    rough: bool


BOARDS: dict[str, BoardPower] = {
    "rpi4b": BoardPower(2.7, 6.4, "pidramble.com power consumption benchmarks (Pi 4 B)", False),
    "rpi3bp": BoardPower(1.9, 5.1, "pidramble.com power consumption benchmarks (Pi 3 B+)", False),
    "rpi5": BoardPower(2.5, 7.9, "rough; sbc-reviews#21 discussion (Geekbench 7.9 W)", True),
    "rpizero2w": BoardPower(0.6, 2.5, "idle: CNX Software 2021-12-09; load: rough", True),
    "generic": BoardPower(3.0, 8.0, "rough; no measurement", True),
}

# devicetree model prefix -> board key
_MODELS = (
    ("Raspberry Pi 5", "rpi5"),
    ("Raspberry Pi 4 Model B", "rpi4b"),
    ("Raspberry Pi 3 Model B Plus", "rpi3bp"),
    ("Raspberry Pi Zero 2 W", "rpizero2w"),
)


def board_from_model(model: str | None) -> str:
    """Board key for a devicetree model string (``generic`` when unknown)."""
    for prefix, key in _MODELS:
        if model and model.startswith(prefix):
            return key
    return "generic"


def detect_board(root: str | Path = "/") -> str:
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            text = (Path(root) / rel).read_bytes().rstrip(b"\x00").decode("utf-8", "replace")
        except OSError:
            continue
        return board_from_model(text.strip())
    return "generic"


def estimate_watts(board: BoardPower, cpu_util: float) -> float:
    util = min(1.0, max(0.0, cpu_util))
    return board.idle_w + (board.load_w - board.idle_w) * util


def _psutil_util() -> Callable[[], float]:
    psutil: Any = importlib.import_module("psutil")  # Any: no stubs installed
    psutil.cpu_percent(interval=None)  # prime: the first call has no interval to measure

    def util() -> float:
        return float(psutil.cpu_percent(interval=None)) / 100.0

    return util


@register
class EstimateMeter(Meter):
    """``estimate:rpi4b`` (or ``estimate:auto?root=/``); ``cpu_util`` is injectable for tests.

    ``cpu_util()`` returns the whole-machine utilisation (0..1) since its previous call, so each
    sample is the average over the interval before it and is reported at that interval's start.
    """

    kind: ClassVar[str] = "estimate"
    measured: ClassVar[bool] = False
    default_interval_s: ClassVar[float] = 1.0
    option_help: ClassVar[dict[str, str]] = {
        "root": "filesystem root for estimate:auto board detection (default /)",
        "idle_w": "override the board's idle watts",
        "load_w": "override the board's full-load watts",
    }

    def __init__(
        self,
        arg: str = "",
        options: dict[str, str] | None = None,
        *,
        cpu_util: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(arg, options)
        key = (arg or "auto").lower()
        if key == "auto":
            key = detect_board(self.options.get("root", "/"))
        if key not in BOARDS:
            raise ConfigError(
                f"estimate: unknown board {arg!r}", hint=f"use one of: auto, {', '.join(BOARDS)}"
            )
        base = BOARDS[key]
        idle = self.float_option("idle_w", base.idle_w)
        load = self.float_option("load_w", base.load_w)
        if load < idle:
            raise ConfigError(f"estimate: load_w {load} is below idle_w {idle}")
        custom = "idle_w" in self.options or "load_w" in self.options
        self.board_key = key
        self.board = BoardPower(idle, load, "configured" if custom else base.source, base.rough)
        self._util_fn = cpu_util
        self._last_t: float | None = None

    def close(self) -> None:
        self._last_t = None

    def read(self) -> list[Sample]:
        if self._util_fn is None:
            self._util_fn = _psutil_util()
        util = self._util_fn()
        now = time.monotonic()
        last, self._last_t = self._last_t, now
        if last is None:
            return []  # the first utilisation figure covers an unknown interval
        return [Sample(last, estimate_watts(self.board, util))]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            board=self.board_key,
            idle_w=self.board.idle_w,
            load_w=self.board.load_w,
            constants_source=self.board.source,
            rough=self.board.rough,
        )
        return out
