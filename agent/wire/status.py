"""What a device reports about itself: the retained state/birth message and the telemetry
record, and the model reference both carry. Built by the agent (agent.service,
agent.serving.telemetry), parsed by the host (``from_json`` for a payload, ``from_dict`` for a
record already decoded, e.g. from the registry). Re-exported by agent.wire.messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from agent.errors import ProtocolError
from agent.wire.codec import MAX_STATE_BYTES, MAX_TELEMETRY_BYTES
from agent.wire.reader import Reader, WireMessage, drop_none, field_values, read_message
from agent.wire.topics import valid_sha256


class _Report(WireMessage):
    """What a device reports (state, telemetry): parsed from a payload of at most
    ``max_bytes`` (``from_json``) or from a record already decoded (``from_dict``)."""

    what: ClassVar[str]
    max_bytes: ClassVar[int]

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        return cls.from_dict(read_message(data, cls.max_bytes, cls.what).obj)

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        raise NotImplementedError


@dataclass(frozen=True)
class ModelRef:
    sha256: str
    name: str
    version: str
    release: int | None = None
    variant: dict[str, Any] = field(default_factory=dict)
    delegate: str | None = None

    @classmethod
    def from_obj(cls, obj: Any, what: str) -> ModelRef:
        r = Reader(obj, what)
        sha = r.get_str("sha256", max_len=64)
        if not valid_sha256(sha):
            raise ProtocolError(f"{what}: field 'sha256' must be 64 lower-case hex characters")
        return cls(
            sha,
            r.get_str("name", max_len=64),
            r.get_str("version", max_len=64),
            r.opt_int("release"),
            r.get_dict("variant", default={}),
            r.opt_str("delegate", max_len=64),
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ModelRef:
        """From a serving model's metadata dict (agent.serving.server.Server.meta)."""
        return cls(
            str(meta["sha256"]),
            str(meta.get("name", "")),
            str(meta.get("version", "")),
            meta.get("release"),
            dict(meta.get("variant") or {}),
            meta.get("delegate"),
        )

    @property
    def variant_key(self) -> str | None:
        """The variant's recipe name (``variant.recipe``), when the manifest names one."""
        recipe = self.variant.get("recipe")
        return recipe if isinstance(recipe, str) else None

    def to_dict(self) -> dict[str, Any]:
        return drop_none(asdict(self))


LATENCY_KEYS = ("p50", "p90", "p95", "p99", "max", "mean")


@dataclass(frozen=True)
class Telemetry(_Report):
    """One window of real inferences (DESIGN.md "Telemetry record"; built by
    agent.serving.telemetry). On the wire every field is present, ``null`` when unknown.

    ``energy`` is the meter's window (agent.energy.window.EnergyWindow.to_dict(): ``avg_w``,
    ``mj_per_inference``, ``mj_per_inference_net`` (null with ``net_missing_reason``),
    ``missing_reason``, ...) or ``{"measured": false, "missing_reason": ...}``; read it through
    the properties below, which tolerate keys a meter does not report."""

    seq: int
    ts: float
    window_s: float
    inferences: int
    model: ModelRef | None = None
    latency_ms: dict[str, float] | None = None  # LATENCY_KEYS; None when no inference ran
    throughput: float = 0.0
    errors: int = 0
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    model_mem_mb: float | None = None
    cpu_pct: float | None = None
    temp_c: float | None = None
    freq_mhz: float | None = None
    throttled: int | None = None
    energy: dict[str, Any] | None = None
    outbox_dropped: int = 0
    non_finite: int = 0
    governor: str | None = None
    thermal: dict[str, Any] | None = None  # agent.board.thermal snapshot
    boot_id: str | None = None
    trial: bool = False  # served by a model on trial
    warmup: bool = False  # the first window after the serving model changed
    threads: int | None = None

    what = "telemetry"  # not annotated: a class attribute, not a field
    max_bytes = MAX_TELEMETRY_BYTES

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        """A record already parsed (e.g. from the registry); ProtocolError when malformed."""
        r = Reader(obj, cls.what)
        model = r.obj.get("model")
        lat = r.opt_dict("latency_ms")
        latency = None
        if lat is not None:
            lr = Reader(lat, "telemetry latency_ms")
            latency = {k: lr.get_num(k) for k in LATENCY_KEYS if k in lat}
        return cls(
            seq=r.get_int("seq"),
            ts=r.get_num("ts"),
            window_s=r.get_num("window_s"),
            inferences=r.get_int("inferences"),
            model=None if model is None else ModelRef.from_obj(model, "telemetry model"),
            latency_ms=latency,
            throughput=r.get_num("throughput", default=0.0),
            errors=r.get_int("errors", default=0),
            rss_mb=r.opt_num("rss_mb"),
            peak_rss_mb=r.opt_num("peak_rss_mb"),
            model_mem_mb=r.opt_num("model_mem_mb"),
            cpu_pct=r.opt_num("cpu_pct"),
            temp_c=r.opt_num("temp_c"),
            freq_mhz=r.opt_num("freq_mhz"),
            throttled=r.opt_int("throttled", hi=2**32),
            energy=r.opt_dict("energy"),
            outbox_dropped=r.get_int("outbox_dropped", default=0),
            non_finite=r.get_int("non_finite", default=0),
            governor=r.opt_str("governor", max_len=64),
            thermal=r.opt_dict("thermal"),
            boot_id=r.opt_str("boot_id", max_len=64),
            trial=r.get_bool("trial", default=False),
            warmup=r.get_bool("warmup", default=False),
            threads=r.opt_int("threads", hi=1024),
        )

    @property
    def sha256(self) -> str | None:
        return self.model.sha256 if self.model else None

    def summary(self) -> dict[str, Any]:
        """The latest window as the state's ``last_window`` carries it (fleet view)."""
        keys = ("ts", "inferences", "latency_ms", "throughput", "energy")
        return {k: getattr(self, k) for k in keys}

    def _energy_num(self, key: str) -> float | None:
        value = (self.energy or {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    def _energy_str(self, key: str) -> str | None:
        value = (self.energy or {}).get(key)
        return value if isinstance(value, str) else None

    @property
    def mj_per_inference(self) -> float | None:
        return self._energy_num("mj_per_inference")

    @property
    def mj_per_inference_net(self) -> float | None:
        return self._energy_num("mj_per_inference_net")

    @property
    def net_missing_reason(self) -> str | None:
        return self._energy_str("net_missing_reason")

    @property
    def energy_missing_reason(self) -> str | None:
        return self._energy_str("missing_reason")

    def to_dict(self) -> dict[str, Any]:
        out = field_values(self)
        out["model"] = None if self.model is None else self.model.to_dict()
        return out


@dataclass(frozen=True)
class State(_Report):
    """Retained birth/death on {p}/dev/{id}/state. The will and a clean stop carry only
    ``online`` (false) and ``reason``; a birth carries the rest."""

    online: bool
    reason: str | None = None
    ts: float | None = None
    boot_id: str | None = None
    agent_version: str | None = None
    runtime: dict[str, Any] | None = None  # {"name", "version"}
    hardware: dict[str, Any] | None = None  # HardwareInfo.to_dict()
    hardware_class: str | None = None
    model: ModelRef | None = None
    install: dict[str, Any] | None = None  # {"state": "idle"|"downloading"|..., ...}
    last_window: dict[str, Any] | None = None  # latest telemetry summary (fleet view)
    disk: dict[str, Any] | None = None  # set while the state disk is full (Outbox.disk_report)
    slot: str | None = None  # the model slot the device serves (its config ``slot``)
    slot_release: int | None = None  # that slot's anti-rollback counter: send a release above
    last_good: ModelRef | None = None  # the model before ``model``, still held in the store

    @classmethod
    def offline(cls, reason: str | None = None) -> State:
        return cls(online=False, reason=reason)

    what = "state"
    max_bytes = MAX_STATE_BYTES

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        """A state already parsed (e.g. the registry's copy); ProtocolError when malformed."""
        r = Reader(obj, cls.what)
        model, last_good = r.obj.get("model"), r.obj.get("last_good")
        return cls(
            online=r.get_bool("online"),
            reason=r.opt_str("reason", max_len=64),
            ts=r.opt_num("ts"),
            boot_id=r.opt_str("boot_id", max_len=64),
            agent_version=r.opt_str("agent_version", max_len=64),
            runtime=r.opt_dict("runtime"),
            hardware=r.opt_dict("hardware"),
            hardware_class=r.opt_str("hardware_class"),
            model=None if model is None else ModelRef.from_obj(model, "state model"),
            install=r.opt_dict("install"),
            last_window=r.opt_dict("last_window"),
            disk=r.opt_dict("disk"),
            slot=r.opt_str("slot", max_len=64),
            slot_release=r.opt_int("slot_release"),
            last_good=None if last_good is None else ModelRef.from_obj(last_good, "last_good"),
        )

    @property
    def sha256(self) -> str | None:
        """The sha256 of the model the device serves (None: none installed)."""
        return self.model.sha256 if self.model else None

    @property
    def install_state(self) -> str | None:
        """``idle`` | ``downloading`` | ``probing`` | ``trial`` (None: not reported)."""
        state = (self.install or {}).get("state")
        return state if isinstance(state, str) else None

    def to_dict(self) -> dict[str, Any]:
        out = field_values(self)
        out["model"] = None if self.model is None else self.model.to_dict()
        out["last_good"] = None if self.last_good is None else self.last_good.to_dict()
        return drop_none(out)
