"""What a simulated fleet is made of: hardware classes (``--classes``) and the rates at which
accepted installs fail to load, fail their trial or drop off the network."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

#: Latency factor of a variant's dtype against the float model on the same board.
DTYPE_FACTOR = {"int8": 0.45, "int16x8": 0.7, "float16": 0.9, "float32": 1.0}


@dataclass(frozen=True)
class SimClass:
    """A hardware class: ``rpi4b-cpu/ai-edge-litert`` plus its float model's latency."""

    hardware_class: str
    runtime: str
    runtime_version: str = "1.4.0"
    p50_ms: float = 20.0

    @classmethod
    def parse(cls, text: str) -> SimClass:
        hw, sep, runtime = text.partition("/")
        if not sep or not hw or not runtime:
            raise ValueError(f"class {text!r}: expected HARDWARE_CLASS/RUNTIME")
        return cls(hw, runtime)

    @property
    def id(self) -> str:
        return f"{self.hardware_class}/{self.runtime}"

    def hardware(self) -> dict[str, Any]:
        board = self.hardware_class.split("-")[0]
        accel = "edgetpu" in self.hardware_class
        return {
            "board": f"simulated {board}",
            "board_id": board,
            "board_family": board,
            "accelerators": [{"kind": "edgetpu", "device": "usb"}] if accel else [],
        }


@dataclass(frozen=True)
class Rates:
    """Fractions of accepted installs that fail to load, fail their trial, or go offline."""

    install_fail: float = 0.0
    trial_fail: float = 0.0
    offline: float = 0.0
    offline_s: float = 30.0  # how long a device that dropped off stays away
    trial_s: float = 1.0  # the trial before committing (or rolling back)
    seed: int = 0

    def fate(self, device: str, sha256: str, release: int) -> str:
        r = random.Random(f"{self.seed}:{device}:{sha256}:{release}").random()
        for name, rate in (
            ("offline", self.offline),
            ("install_fail", self.install_fail),
            ("trial_fail", self.trial_fail),
        ):
            if r < rate:
                return name
            r -= rate
        return "commit"


def parse_classes(text: str) -> list[tuple[str, int]]:
    """``"rpi4b-cpu/ai-edge-litert=3,rpi5-cpu/ai-edge-litert"`` -> classes with weights."""
    out: list[tuple[str, int]] = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, weight = item.partition("=")
        SimClass.parse(name)
        if weight and (not weight.isdigit() or int(weight) < 1):
            raise ValueError(f"class {item!r}: the weight after '=' must be a positive integer")
        out.append((name, int(weight or 1)))
    if not out:
        raise ValueError("no classes given: e.g. --classes rpi4b-cpu/ai-edge-litert=3")
    return out


def assign_classes(
    classes: list[SimClass], total: int, weights: list[int] | None = None
) -> list[SimClass]:
    """Class of every device of the fleet, interleaved by weight (deterministic)."""
    pattern = [
        c for c, w in zip(classes, weights or [1] * len(classes), strict=True) for _ in range(w)
    ]
    return [pattern[i % len(pattern)] for i in range(total)]
