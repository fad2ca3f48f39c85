"""Typed JSON messages of the MQTT protocol, validated at the edge.

Every ``from_json`` takes the raw MQTT payload (bytes) and either returns a frozen dataclass whose
fields have the documented types, or raises ProtocolError (code "too_large" or "malformed", or
"unknown_verb" for commands). Every ``to_json`` returns canonical JSON bytes. Schemas and
examples: docs/protocol.md. The state and telemetry types live in agent.wire.status and are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.errors import ProtocolError
from agent.wire.codec import MAX_COMMAND_BYTES, MAX_EVENT_BYTES, MAX_NEED_BYTES
from agent.wire.reader import Reader, WireMessage, drop_none, field_values, read_message
from agent.wire.reasons import Reason
from agent.wire.status import LATENCY_KEYS, ModelRef, State, Telemetry
from agent.wire.topics import VERBS, valid_sha256

__all__ = [
    "LATENCY_KEYS",
    "Command",
    "CommandReply",
    "Event",
    "EventKind",
    "ModelRef",
    "NeedRequest",
    "ReplyStatus",
    "ReplyTo",
    "State",
    "Telemetry",
]

MAX_RANGES = 1024
MAX_INDEX = (1 << 32) - 1

# ---------------------------------------------------------------------------------------------
# Commands: host -> device on {p}/dev/{id}/cmd/{verb}


#: Bounds on what a command may ask of a device (signed or not): inferences a second from the
#: load generator, runs of one benchmark.
MAX_LOADGEN_HZ = 500
MAX_BENCH_RUNS = 5000


@dataclass(frozen=True)
class Command(WireMessage):
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
        r = read_message(data, MAX_COMMAND_BYTES, f"cmd/{verb}")
        cmd = cls(
            verb,
            r.get_str("id", max_len=128),
            r.get_dict("args", default={}),
            r.opt_num("ts"),
            r.opt_dict("auth"),
        )
        if not cmd.id:
            raise ProtocolError(f"cmd/{verb}: field 'id' must not be empty")
        _check_args(verb, Reader(cmd.args, f"cmd/{verb} args"))
        return cmd

    def to_dict(self) -> dict[str, Any]:
        return drop_none({"id": self.id, "args": self.args, "ts": self.ts, "auth": self.auth})


def _check_args(verb: str, a: Reader) -> None:
    if verb == "deploy":
        # verified byte-for-byte by agent.wire.manifest_signing.verify_manifest
        a.get_dict("manifest")
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
            lg = Reader(loadgen, "cmd/config loadgen")
            lg.get_bool("enabled", default=False)
            rate = lg.get_num("rate_hz", default=0)
            if not 0 <= rate <= MAX_LOADGEN_HZ:
                raise ProtocolError(
                    f"cmd/config: loadgen.rate_hz must be within [0, {MAX_LOADGEN_HZ}]"
                )


@dataclass(frozen=True)
class ReplyTo:
    """Where the reply to a command goes (MQTT5 response topic + correlation data)."""

    cmd_id: str
    verb: str
    topic: str | None
    correlation: bytes | None


class ReplyStatus(StrEnum):
    OK = "ok"  # done (rollback, config, rebirth, state, bench result)
    ACCEPTED = "accepted"  # started (deploy accepted, bench started); events follow
    DUPLICATE = "duplicate"  # already seen this command id or manifest release: no-op
    REJECTED = "rejected"  # refused; ``code`` says why
    ERROR = "error"  # failed while running; ``code`` says why


@dataclass(frozen=True)
class CommandReply(WireMessage):
    """Published to the command's MQTT5 response topic with its correlation data."""

    id: str
    verb: str
    status: str
    code: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes) -> CommandReply:
        r = read_message(data, MAX_EVENT_BYTES, "command reply")
        status = r.get_choice("status", ReplyStatus, max_len=16)
        return cls(
            r.get_str("id", max_len=128),
            r.get_str("verb", max_len=32),
            status,
            r.opt_str("code", max_len=64),
            r.get_str("message", default="", max_len=4096),
            r.get_dict("data", default={}),
        )

    def to_dict(self) -> dict[str, Any]:
        return drop_none(field_values(self))


# ---------------------------------------------------------------------------------------------
# Need: device -> host on {p}/dev/{id}/need (pull transfer)


@dataclass(frozen=True)
class NeedRequest(WireMessage):
    """Chunk indexes the device wants next, as half-open ``[start, end)`` ranges (a window:
    the device asks for at most its window of chunks at a time).

    ``stream`` true: the device listens to the shared stream ``{p}/models/{sha256}/chunks``, so
    the host answers only the indexes its stream has already passed (the device missed them)
    and leaves the rest to the stream (docs/protocol.md, "Shared chunk stream")."""

    sha256: str
    ranges: tuple[tuple[int, int], ...]
    stream: bool = False

    @classmethod
    def from_ranges(
        cls, sha256: str, ranges: Sequence[range], *, stream: bool = False
    ) -> NeedRequest:
        return cls(sha256, tuple((r.start, r.stop) for r in ranges), stream)

    @classmethod
    def from_json(cls, data: bytes) -> NeedRequest:
        r = read_message(data, MAX_NEED_BYTES, "need")
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
        return cls(sha, tuple(out), r.get_bool("stream", default=False))

    def indexes(self) -> list[int]:
        return sorted({i for start, end in self.ranges for i in range(start, end)})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256, "ranges": [list(r) for r in self.ranges]}
        if self.stream:
            out["stream"] = True  # absent otherwise: the message of a plain pull is unchanged
        return out


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
class Event(WireMessage):
    kind: str
    code: str = "ok"
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    ts: float | None = None
    seq: int | None = None

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        r = read_message(data, MAX_EVENT_BYTES, "event")
        kind = r.get_choice("kind", EventKind, max_len=32)
        return cls(
            kind,
            r.get_str("code", default="ok", max_len=64),
            r.get_str("message", default="", max_len=4096),
            r.get_dict("data", default={}),
            r.opt_num("ts"),
            r.opt_int("seq"),
        )

    def to_dict(self) -> dict[str, Any]:
        return drop_none(field_values(self))
