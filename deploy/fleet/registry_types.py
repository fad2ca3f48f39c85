"""Typed rows of the host registry (deploy/registry.py); pure data, no SQLite here."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import ProtocolError
from agent.wire.messages import State
from agent.wire.record import Record

ACCELERATORS = ("edgetpu",)


def class_id(hardware_class: str, runtime: str) -> str:
    """The registry's hardware-class id: ``"<hardware_class>/<runtime>"``.

    ``hardware_class`` is ``agent.board.hardware.HardwareInfo.hardware_class()`` ("rpi4b-cpu",
    "rpi4b-edgetpu-usb"); the runtime is part of the class because it changes speed as much as
    the quantization does (ANCHORS.md: tflite-runtime 2.14 ~5x slower than LiteRT on the same CPU).
    """
    return f"{hardware_class}/{runtime}"


def board_family_of(board: str) -> str:
    if board.startswith("rpi"):
        return "raspberrypi"
    if board.startswith("coral-devboard"):
        return "coral-devboard"
    return board  # generic boards: the SoC/arch id is the family


@dataclass(frozen=True)
class HardwareClass(Record):
    id: str
    hardware_class: str
    board: str
    board_family: str
    accelerator: str  # "cpu" | "edgetpu"
    runtime: str
    description: str = ""

    @classmethod
    def from_id(cls, cid: str, description: str = "") -> HardwareClass:
        """Parse ``"rpi4b-edgetpu-usb/ai-edge-litert"``; a missing runtime part is ``""``."""
        hw, _, runtime = cid.partition("/")
        board, accel = hw, "cpu"
        if hw.endswith("-cpu"):
            board = hw[: -len("-cpu")]
        for kind in ACCELERATORS:
            m = re.match(rf"^(.*)-{kind}(-[a-z]+)?$", hw)
            if m:
                board, accel = m.group(1), kind
        return cls(cid, hw, board, board_family_of(board), accel, runtime, description)


@dataclass(frozen=True)
class Device(Record):
    id: str
    hardware_class: str | None
    board: str | None
    accelerator: str | None
    runtime: str | None
    runtime_version: str | None
    last_seen: float | None
    online: bool
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> State:
        """The retained state as the wire type both sides share (agent.wire.status.State)."""
        return parse_state(self.state, self.online)


def parse_state(state: dict[str, Any], online: bool) -> State:
    """``state`` (a retained birth as stored) as a :class:`State`; an empty or unreadable one
    reads as a state with only ``online`` (nothing known about its model)."""
    if not state:
        return State(online=online)
    try:
        return State.from_dict({**state, "online": online})
    except ProtocolError:
        return State(online=online)


@dataclass(frozen=True)
class ModelRow(Record):
    name: str
    source_path: str
    source_sha256: str
    float_metrics: dict[str, Any] = field(default_factory=dict)  # {"accuracy": 0.97, ...}


@dataclass(frozen=True)
class Variant(Record):
    id: str
    model: str
    recipe: str
    path: str
    sha256: str
    size: int
    quantization: str
    accuracy: float | None = None  # [0, 1]
    agreement: float | None = None  # [0, 1], top-1 match with float
    snr_db: float | None = None
    operators: list[dict[str, Any]] = field(default_factory=list)
    min_runtime: list[dict[str, Any]] = field(default_factory=list)
    conversion_s: float | None = None
    available: bool = True
    unavailable_reason: str | None = None

    @property
    def size_mb(self) -> float:
        return self.size / 2**20


@dataclass(frozen=True)
class Deployment(Record):
    id: int
    device: str
    class_id: str | None
    variant: str
    release: int
    manifest_sha256: str
    started: float
    finished: float | None
    outcome: str | None  # None while running; "committed" | "rolled_back" | "rejected"
    reason: str | None


@dataclass(frozen=True)
class Stats:
    """Roll-up of the telemetry windows of one variant on one class.

    ``p95_ms`` is the inference-weighted median of the per-window p95 values (one slow window,
    e.g. a page-cache miss, does not move it); ``p95_max_ms`` is the worst window.
    ``peak_memory_mb`` is the largest window-end RSS: ``peak_rss_mb`` (ru_maxrss) is kept too,
    but it is a process-lifetime peak that never falls when a smaller variant replaces a larger.
    ``mj_per_inference`` is inference-weighted over the windows' net-of-idle figures where any
    window has one (``energy_basis`` "net"), else over their gross figures ("gross": the whole
    board's energy, idle included); ``energy_measured`` is True only when every window
    with energy had a real meter, None when no window had energy.
    """

    class_id: str
    variant: str
    windows: int = 0
    inferences: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p95_max_ms: float | None = None
    peak_memory_mb: float | None = None
    peak_rss_mb: float | None = None
    mj_per_inference: float | None = None
    energy_measured: bool | None = None
    energy_basis: str | None = None
    recent_temps_c: tuple[float, ...] = ()
    throttled_windows: int = 0
    hot_windows: int = 0  # throttled or >= rollup.HOT_C: kept apart from the device metrics
    judged_on_hot: bool = False  # no cool window: the metrics come from hot ones
    first_ts: float | None = None
    last_ts: float | None = None

    def metrics(self) -> dict[str, float | None]:
        """The device-measured values in the names targets use."""
        return {
            "p95_ms": self.p95_ms,
            "peak_memory_mb": self.peak_memory_mb,
            "mj_per_inference": self.mj_per_inference,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recent_temps_c"] = list(self.recent_temps_c)
        return out


@dataclass(frozen=True)
class DecisionRow(Record):
    id: int
    ts: float
    model: str
    class_id: str
    action: str
    variant: str | None
    reason: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class RolloutRow(Record):
    id: int
    model: str
    variant: str
    class_id: str | None
    state: str
    waves: list[Any]
    counts: dict[str, Any]
    plan: dict[str, Any]
    created: float
    updated: float


@dataclass(frozen=True)
class RolloutDevice(Record):
    rollout: int
    device: str
    wave: int
    state: str
    reason: str | None
    updated: float
