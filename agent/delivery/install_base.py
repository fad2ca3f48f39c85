"""What the installer's parts share: what the installer talks to (the core thread's protocols,
the one-way :data:`Outputs`), the record of the running install (:class:`Install`) and
:class:`InstallerBase`, the fields every step reads (set by agent.delivery.install.Installer) and
the failure path that ends an install.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from agent.delivery.checks import Gates
from agent.delivery.store import ModelStore
from agent.mqtt.publisher import Publisher
from agent.serving.server import LatencyWindow, Server
from agent.wire.manifest import Manifest
from agent.wire.messages import EventKind, ReplyStatus, ReplyTo
from agent.wire.reasons import Reason
from agent.wire.stream import StreamPosition

log = logging.getLogger("agent.delivery.install")  # the installer's lines keep their name


#: Where the installer's (and the command verbs') messages go, one way: the device's publisher.
Outputs: TypeAlias = Publisher


class CoreHost(Protocol):
    """What the core thread offers the installer and the command verbs (agent.commands)."""

    def background(
        self, name: str, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
    ) -> None: ...
    def state_changed(self) -> None:
        """Republish the retained state (the install phase or the serving model changed)."""
        ...


class InstallHost(CoreHost, Protocol):
    """What the installer asks of the agent core besides :class:`CoreHost`: the trial's
    serving slot and the process's RSS. Messages go to :class:`Outputs`; what it only reads
    (store, trust keys, runtime, board) is handed in."""

    def start_trial(self, path: Path, manifest: Manifest, delegate: str) -> Server: ...
    def end_trial(self, commit: bool) -> None: ...
    def rss_mb(self) -> float: ...


@dataclass
class Install:
    manifest: Manifest
    reply: ReplyTo | None
    gates: Gates
    delegate: str
    phase: str = "downloading"  # downloading | probing | trial
    inflight: dict[int, float] = field(default_factory=dict)
    received_bytes: int = 0
    corrupt_chunks: int = 0
    bad_by_index: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    first_chunk: float | None = None  # when the first chunk of this run of the transfer landed
    last_rx: float = field(default_factory=time.monotonic)
    reconnected: float | None = None  # set on a reconnect until the requests before it expire
    last_progress: float = 0.0
    scan_from: int = 0  # chunks below this are received or requested (the next request's start)
    checked_models: bool = False  # whether models/ was checked for these bytes already
    stream: StreamPosition | None = None  # following {p}/models/{sha256}/chunks (deploy arg)
    trial_started: float | None = None
    trial_window: LatencyWindow | None = None
    trial_server: Server | None = None

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {"sha256": m.sha256, "name": m.name, "version": m.version, "release": m.release}


class InstallerBase:
    """The installer's fields its parts read (agent.delivery.transfer, agent.delivery.trial)."""

    host: InstallHost
    out: Outputs
    store: ModelStore
    runtime_name: str
    runtime_version: str
    has_edgetpu: bool
    default_gates: Gates
    default_delegate: str
    window_bytes: int
    probe_timeout_s: float
    probe_memory_mb: int
    active: Install | None
    stale_chunks: int

    def _finish_transfer(self, a: Install) -> None:
        """All bytes are here: verify, then probe (agent.delivery.trial)."""
        raise NotImplementedError

    def _leave_stream(self, a: Install) -> None:
        """Stop following the shared stream (transfer done, failed, stalled or abandoned)."""
        if a.stream is not None:
            a.stream = None
            self.out.follow_stream(a.manifest.sha256, False)

    def _fail_install(self, a: Install, code: str, message: str, **data: Any) -> None:
        log.warning("install of %s failed (%s): %s", a.manifest.name, code, message)
        self._leave_stream(a)
        self.store.abort(a.manifest.sha256)
        self.active = None
        self.host.state_changed()
        self.out.reply(a.reply, ReplyStatus.ERROR, code, message, **_ref(a.manifest))
        self.out.event(
            EventKind.REJECTED
            if code in (Reason.BAD_MODEL, Reason.BAD_CHUNK)
            else EventKind.ROLLED_BACK,
            code,
            message,
            **_ref(a.manifest),
            **data,
        )


def _ref(m: Manifest) -> dict[str, Any]:
    return {"sha256": m.sha256, "name": m.name, "version": m.version, "release": m.release}


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)
