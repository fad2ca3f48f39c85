"""Typed JSON messages of the MQTT protocol, validated at the edge.

Every ``from_json`` takes the raw MQTT payload (bytes) and either returns a frozen dataclass whose
fields have the documented types, or raises ProtocolError (code "too_large" or "malformed", or
"unknown_verb" for commands). Every ``to_json`` returns canonical JSON bytes. Schemas and
examples: docs/protocol.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.errors import ProtocolError
from agent.wire.codec import (
    MAX_COMMAND_BYTES,
    MAX_EVENT_BYTES,
    MAX_NEED_BYTES,
    MAX_STATE_BYTES,
    MAX_TELEMETRY_BYTES,
    canonical_json,
    parse_json_object,
)
from agent.wire.reasons import Reason
from agent.wire.topics import VERBS, valid_sha256

MAX_RANGES = 1024
MAX_INDEX = (1 << 32) - 1


class _Reader:
    """Typed access to one JSON object; every failure is a ProtocolError naming the field."""

    def __init__(self, obj: Any, what: str) -> None:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what}: expected a JSON object, got {type(obj).__name__}")
        self.obj: dict[str, Any] = obj
        self.what = what

    def _fail(self, key: str, expected: str) -> ProtocolError:
        got = self.obj.get(key)
        return ProtocolError(f"{self.what}: field {key!r} must be {expected}, got {got!r:.80}")

    def get_str(self, key: str, *, default: str | None = None, max_len: int = 256) -> str:
        value = self.obj.get(key, default)
        if not isinstance(value, str) or len(value) > max_len:
            raise self._fail(key, f"a string of at most {max_len} characters")
        return value

    def opt_str(self, key: str, *, max_len: int = 256) -> str | None:
        return None if self.obj.get(key) is None else self.get_str(key, max_len=max_len)

    def get_int(self, key: str, *, default: int | None = None, lo: int = 0, hi: int = 2**53) -> int:
        value = self.obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(key, f"an integer in [{lo}, {hi}]")
        return value

    def opt_int(self, key: str, *, lo: int = 0, hi: int = 2**53) -> int | None:
        return None if self.obj.get(key) is None else self.get_int(key, lo=lo, hi=hi)

    def get_num(self, key: str, *, default: float | None = None) -> float:
        value = self.obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "a number")
        if abs(value) > 1e15 or not math.isfinite(value):
            raise self._fail(key, "a finite number")
        return float(value)

    def opt_num(self, key: str) -> float | None:
        return None if self.obj.get(key) is None else self.get_num(key)

    def get_bool(self, key: str, *, default: bool | None = None) -> bool:
        value = self.obj.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def get_dict(self, key: str, *, default: dict[str, Any] | None = None) -> dict[str, Any]:
        value = self.obj.get(key, default)
        if not isinstance(value, dict):
            raise self._fail(key, "an object")
        return value

    def opt_dict(self, key: str) -> dict[str, Any] | None:
        return None if self.obj.get(key) is None else self.get_dict(key)

    def get_list(self, key: str, *, default: list[Any] | None = None) -> list[Any]:
        value = self.obj.get(key, default)
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value


def _load(data: bytes, max_bytes: int, what: str) -> _Reader:
    return _Reader(parse_json_object(data, max_bytes=max_bytes, what=what), what)


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Commands: host -> device on {p}/dev/{id}/cmd/{verb}


#: Bounds on what a command may ask of a device (signed or not): inferences a second from the
#: load generator, runs of one benchmark.
MAX_LOADGEN_HZ = 500
MAX_BENCH_RUNS = 5000


@dataclass(frozen=True)
class Command:
    """``{"id": "c-42", "args": {...}, "ts": 1700000000}``; the verb comes from the topic.

    ``id`` names the command for de-duplication (P16) and appears in the reply; MQTT5
    correlation data and response topic travel as properties (the transport's business)."""

    verb: str
    id: str
    args: dict[str, Any] = field(default_factory=dict)
    ts: float | None = None
    auth: dict[str, Any] | None = None  # signed commands (agent/wire/signed.py)

    @classmethod
    def from_json(cls, data: bytes, verb: str) -> Command:
        if verb not in VERBS:
            raise ProtocolError(
                f"unknown command verb {verb!r}",
                code=Reason.UNKNOWN_VERB,
                hint=f"use one of {', '.join(sorted(VERBS))}",
            )
        r = _load(data, MAX_COMMAND_BYTES, f"cmd/{verb}")
        cmd = cls(
            verb,
            r.get_str("id", max_len=128),
            r.get_dict("args", default={}),
            r.opt_num("ts"),
            r.opt_dict("auth"),
        )
        if not cmd.id:
            raise ProtocolError(f"cmd/{verb}: field 'id' must not be empty")
        _check_args(verb, _Reader(cmd.args, f"cmd/{verb} args"))
        return cmd

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"id": self.id, "args": self.args, "ts": self.ts, "auth": self.auth})

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


def _check_args(verb: str, a: _Reader) -> None:
    if verb == "deploy":
        a.get_dict("manifest")  # verified byte-for-byte by agent.wire.manifest.verify_manifest
    elif verb == "bench":
        a.opt_int("runs", lo=1, hi=MAX_BENCH_RUNS)
        a.opt_int("threads", lo=1, hi=256)
        a.opt_str("delegate", max_len=512)
    elif verb == "config":
        interval = a.opt_num("telemetry_interval_s")
        if interval is not None and not 0.5 <= interval <= 3600:
            raise ProtocolError("cmd/config: telemetry_interval_s must be within [0.5, 3600]")
        loadgen = a.opt_dict("loadgen")
        if loadgen is not None:
            lg = _Reader(loadgen, "cmd/config loadgen")
            lg.get_bool("enabled", default=False)
            rate = lg.get_num("rate_hz", default=0)
            if not 0 <= rate <= MAX_LOADGEN_HZ:
                raise ProtocolError(
                    f"cmd/config: loadgen.rate_hz must be within [0, {MAX_LOADGEN_HZ}]"
                )


class ReplyStatus(StrEnum):
    OK = "ok"  # done (rollback, config, rebirth, state, bench result)
    ACCEPTED = "accepted"  # started (deploy accepted, bench started); events follow
    DUPLICATE = "duplicate"  # already seen this command id or manifest release: no-op
    REJECTED = "rejected"  # refused; ``code`` says why
    ERROR = "error"  # failed while running; ``code`` says why


@dataclass(frozen=True)
class CommandReply:
    """Published to the command's MQTT5 response topic with its correlation data."""

    id: str
    verb: str
    status: str
    code: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes) -> CommandReply:
        r = _load(data, MAX_EVENT_BYTES, "command reply")
        status = r.get_str("status", max_len=16)
        if status not in set(ReplyStatus):
            raise ProtocolError(f"command reply: unknown status {status!r}")
        return cls(
            r.get_str("id", max_len=128),
            r.get_str("verb", max_len=32),
            status,
            r.opt_str("code", max_len=64),
            r.get_str("message", default="", max_len=4096),
            r.get_dict("data", default={}),
        )

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"id": self.id, "verb": self.verb, "status": self.status, "code": self.code,
             "message": self.message, "data": self.data}
        )  # fmt: skip

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


# ---------------------------------------------------------------------------------------------
# Need: device -> host on {p}/dev/{id}/need (pull transfer)


@dataclass(frozen=True)
class NeedRequest:
    """Chunk indexes the device wants next, as half-open ``[start, end)`` ranges (a window:
    the device asks for at most its window of chunks at a time)."""

    sha256: str
    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def from_ranges(cls, sha256: str, ranges: Sequence[range]) -> NeedRequest:
        return cls(sha256, tuple((r.start, r.stop) for r in ranges))

    @classmethod
    def from_json(cls, data: bytes) -> NeedRequest:
        r = _load(data, MAX_NEED_BYTES, "need")
        sha = r.get_str("sha256", max_len=64)
        if not valid_sha256(sha):
            raise ProtocolError("need: field 'sha256' must be 64 lower-case hex characters")
        raw = r.get_list("ranges")
        if len(raw) > MAX_RANGES:
            raise ProtocolError(f"need: more than {MAX_RANGES} ranges")
        out: list[tuple[int, int]] = []
        for item in raw:
            ok = isinstance(item, list) and len(item) == 2
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            if not ok or not 0 <= item[0] < item[1] <= MAX_INDEX + 1:
                raise ProtocolError(f"need: range {item!r:.40} is not [start, end) with start<end")
            out.append((item[0], item[1]))
        return cls(sha, tuple(out))

    def indexes(self) -> list[int]:
        return sorted({i for start, end in self.ranges for i in range(start, end)})

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "ranges": [list(r) for r in self.ranges]}

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


# ---------------------------------------------------------------------------------------------
# Events: device -> host on {p}/dev/{id}/events


class EventKind(StrEnum):
    INSTALL_ACCEPTED = "install_accepted"
    INSTALL_PROGRESS = "install_progress"
    INSTALL_VERIFIED = "install_verified"
    TRIAL_STARTED = "trial_started"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    RECOVERED = "recovered"
    BENCH_RESULT = "bench_result"
    INPUT_REJECTED = "input_rejected"
    ERROR = "error"
    DISK_FULL = "disk_full"  # data: Outbox.disk_report() (code "disk_full"; "ok" when it clears)


@dataclass(frozen=True)
class Event:
    kind: str
    code: str = "ok"
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    ts: float | None = None
    seq: int | None = None

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        r = _load(data, MAX_EVENT_BYTES, "event")
        kind = r.get_str("kind", max_len=32)
        if kind not in set(EventKind):
            raise ProtocolError(f"event: unknown kind {kind!r}")
        return cls(
            kind,
            r.get_str("code", default="ok", max_len=64),
            r.get_str("message", default="", max_len=4096),
            r.get_dict("data", default={}),
            r.opt_num("ts"),
            r.opt_int("seq"),
        )

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"kind": self.kind, "code": self.code, "message": self.message, "data": self.data,
             "ts": self.ts, "seq": self.seq}
        )  # fmt: skip

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


# ---------------------------------------------------------------------------------------------
# Telemetry and state


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
        r = _Reader(obj, what)
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

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {"sha256": self.sha256, "name": self.name, "version": self.version,
             "release": self.release, "variant": self.variant, "delegate": self.delegate}
        )  # fmt: skip


LATENCY_KEYS = ("p50", "p90", "p95", "p99", "max", "mean")


@dataclass(frozen=True)
class Telemetry:
    """One window of real inferences (DESIGN.md "Telemetry record")."""

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

    @classmethod
    def from_json(cls, data: bytes) -> Telemetry:
        r = _load(data, MAX_TELEMETRY_BYTES, "telemetry")
        model = r.obj.get("model")
        lat = r.opt_dict("latency_ms")
        latency = None
        if lat is not None:
            lr = _Reader(lat, "telemetry latency_ms")
            latency = {k: lr.get_num(k) for k in LATENCY_KEYS if k in lat}
        return cls(
            seq=r.get_int("seq"), ts=r.get_num("ts"), window_s=r.get_num("window_s"),
            inferences=r.get_int("inferences"),
            model=None if model is None else ModelRef.from_obj(model, "telemetry model"),
            latency_ms=latency, throughput=r.get_num("throughput", default=0.0),
            errors=r.get_int("errors", default=0), rss_mb=r.opt_num("rss_mb"),
            peak_rss_mb=r.opt_num("peak_rss_mb"), model_mem_mb=r.opt_num("model_mem_mb"),
            cpu_pct=r.opt_num("cpu_pct"), temp_c=r.opt_num("temp_c"),
            freq_mhz=r.opt_num("freq_mhz"), throttled=r.opt_int("throttled", hi=2**32),
            energy=r.opt_dict("energy"), outbox_dropped=r.get_int("outbox_dropped", default=0),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["model"] = None if self.model is None else self.model.to_dict()
        return _drop_none(out)

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class State:
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

    @classmethod
    def offline(cls, reason: str | None = None) -> State:
        return cls(online=False, reason=reason)

    @classmethod
    def from_json(cls, data: bytes) -> State:
        r = _load(data, MAX_STATE_BYTES, "state")
        model = r.obj.get("model")
        return cls(
            online=r.get_bool("online"), reason=r.opt_str("reason", max_len=64), ts=r.opt_num("ts"),
            boot_id=r.opt_str("boot_id", max_len=64),
            agent_version=r.opt_str("agent_version", max_len=64), runtime=r.opt_dict("runtime"),
            hardware=r.opt_dict("hardware"), hardware_class=r.opt_str("hardware_class"),
            model=None if model is None else ModelRef.from_obj(model, "state model"),
            install=r.opt_dict("install"), last_window=r.opt_dict("last_window"),
            disk=r.opt_dict("disk"),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["model"] = None if self.model is None else self.model.to_dict()
        return _drop_none(out)

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())
