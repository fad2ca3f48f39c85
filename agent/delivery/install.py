"""The install state machine: accept -> transfer -> verify -> probe -> trial -> commit | rollback.

Owned and driven by the agent's core thread (agent.service): every method here runs there, so
nothing is locked. Slow work (the sandboxed probe) runs on a worker thread through
``host.background`` and comes back as a call on the core thread.

Order of the acceptance checks (nothing is written before all pass): signature, schema, expiry
(agent.wire.manifest.verify_manifest), release counter (agent.delivery.store), compatibility with
this board
(accelerator, operator versions the installed runtime resolves), free disk and limits
(ModelStore.begin). Every rejection is an event with a reason code; the state is unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import LimitsConfig
from agent.delivery.store import ModelStore
from agent.errors import EdgeloopError, IncompatibleModelError, ManifestError, StoreError
from agent.serving.server import LatencyWindow, Server
from agent.serving.stats import summarize
from agent.system.crashpoints import crash_point
from agent.wire.chunks import decode_chunk
from agent.wire.manifest import Manifest, verify_manifest
from agent.wire.messages import Command, EventKind, ReplyStatus
from agent.wire.reasons import Reason

if TYPE_CHECKING:  # the install-only modules load on the first deploy (idle RSS, ~5 MB)
    from agent.runtime.sandbox import ProbeResult

log = logging.getLogger(__name__)

# Bytes requested and not yet received: enough to cover the host's answer time on a LAN. On
# loopback (one run, devices pushed in turn: tests/bench_delivery.py and docs/benchmarks.md)
# 1 MiB moved 168 MB/s, 2 MiB 196 MB/s, 8 MiB 176 MB/s; a link with a long round trip wants
# more (bandwidth x round trip). One default, the config's: [limits] transfer_window_kb.
DEFAULT_WINDOW_BYTES = LimitsConfig.transfer_window_kb * 1024
MAX_BAD_CHUNK = 5  # the same chunk failing its hash this often ends the install (endless data)


@dataclass(frozen=True)
class ReplyTo:
    """Where the reply to a command goes (MQTT5 response topic + correlation data)."""

    cmd_id: str
    verb: str
    topic: str | None
    correlation: bytes | None


@dataclass(frozen=True)
class Gates:
    """Health gates of a trial (config defaults, overridable per deploy)."""

    min_inferences: int
    min_seconds: float
    max_seconds: float
    p95_ms: float | None
    max_rss_mb: float | None

    @classmethod
    def merge(cls, base: Gates, override: Mapping[str, Any]) -> Gates:
        def num(key: str, default: Any) -> Any:
            value = override.get(key, default)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            return value if ok else default

        return cls(
            int(num("min_inferences", base.min_inferences)),
            float(num("min_seconds", base.min_seconds)),
            float(num("max_seconds", base.max_seconds)),
            num("p95_ms", base.p95_ms),
            num("max_rss_mb", base.max_rss_mb),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class InstallHost(Protocol):
    """What the installer needs from the agent core."""

    @property
    def store(self) -> ModelStore: ...
    @property
    def trust_keys(self) -> Mapping[str, Any]: ...
    @property
    def runtime_name(self) -> str: ...
    @property
    def runtime_version(self) -> str: ...
    @property
    def has_edgetpu(self) -> bool: ...
    @property
    def identity(self) -> tuple[str, str | None]: ...  # (device id, hardware class)

    def event(self, kind: str, code: str = "ok", message: str = "", **data: Any) -> None: ...
    def progress(self, data: dict[str, Any]) -> None: ...
    def reply(
        self,
        to: ReplyTo | None,
        status: str,
        code: str | None = None,
        message: str = "",
        **data: Any,
    ) -> None: ...
    def request_chunks(self, sha256: str, indexes: list[int]) -> None: ...
    def background(
        self, name: str, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
    ) -> None: ...
    def start_trial(self, path: Path, manifest: Manifest, delegate: str) -> Server: ...
    def end_trial(self, commit: bool) -> None: ...
    def rss_mb(self) -> float: ...
    def state_changed(self) -> None: ...


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
    trial_started: float | None = None
    trial_window: LatencyWindow | None = None
    trial_server: Server | None = None

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {"sha256": m.sha256, "name": m.name, "version": m.version, "release": m.release}


def operator_problems(manifest: Manifest, runtime: str, version: str, delegate: str) -> list[str]:
    """Operators the manifest declares that this runtime is known not to resolve."""
    from agent.runtime import compat, modelfile

    table, _note = compat.find_table(runtime, version)
    if table is None:
        return []
    problems = []
    for name, ver in manifest.requirements.operators:
        custom = name not in table.builtin
        if custom and (name == modelfile.EDGETPU_CUSTOM_OP and delegate.startswith("edgetpu")):
            continue
        op = modelfile.OperatorInfo(name=name, version=ver, custom=custom, count=1)
        if not table.supports(op):
            problems.append(f"{name} v{ver} (not resolved by {runtime} {table.version})")
    return problems


class Installer:
    """One install at a time; a second deploy while one runs is refused with ``busy``."""

    def __init__(
        self,
        host: InstallHost,
        *,
        default_gates: Gates,
        default_delegate: str,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        chunk_timeout_s: float = 3.0,
        probe_timeout_s: float = 60.0,
        probe_memory_mb: int = 2048,
        reconnect_grace_s: float = 0.5,
    ) -> None:
        self.host = host
        self.default_gates = default_gates
        self.default_delegate = default_delegate
        self.window_bytes = window_bytes
        self.chunk_timeout_s = chunk_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.probe_memory_mb = probe_memory_mb
        self.reconnect_grace_s = reconnect_grace_s
        self.active: Install | None = None
        self.stale_chunks = 0

    # ---- state for the birth message -------------------------------------------------------
    def state(self) -> dict[str, Any]:
        a = self.active
        if a is None:
            return {"state": "idle"}
        out: dict[str, Any] = {"state": a.phase, **a.summary()}
        if a.phase == "downloading":
            out["received_bytes"] = a.received_bytes
            out["size"] = a.manifest.size
        return out

    # ---- accept ----------------------------------------------------------------------------
    def on_deploy(self, cmd: Command, reply: ReplyTo | None) -> None:
        store = self.host.store
        try:
            manifest = verify_manifest(
                cmd.args.get("manifest", {}), self.host.trust_keys, now=store.trusted_now()
            )
        except ManifestError as exc:
            self._reject(reply, exc.code, exc.message, None)
            return
        a = self.active
        if a is not None:
            if a.manifest.sha256 == manifest.sha256 and a.manifest.release == manifest.release:
                self.host.reply(reply, ReplyStatus.DUPLICATE, Reason.REPLAYED, "already installing")
                if a.phase == "downloading":  # a re-sent deploy also nudges the transfer
                    self._request_more(a, force=True)
            else:
                self._reject(reply, Reason.BUSY, f"installing {a.manifest.name} now", manifest)
            return
        device_id, hardware_class = self.host.identity
        if not manifest.addressed_to(device_id, hardware_class):
            msg = f"addressed to {manifest.targets}, not to {device_id} ({hardware_class})"
            self._reject(reply, Reason.WRONG_TARGET, msg, manifest)
            return
        try:
            verdict = store.check_release(manifest)
        except ManifestError as exc:
            self._reject(reply, exc.code, exc.message, manifest)
            return
        staged = {m.sha256 for m in store.staged()}
        if verdict == "replayed" and manifest.sha256 not in staged:
            cur = store.current()
            msg = "already installed" if cur and cur.sha256 == manifest.sha256 else "replayed"
            self.host.reply(reply, ReplyStatus.DUPLICATE, Reason.REPLAYED, msg, **_ref(manifest))
            return
        delegate = str(manifest.variant.delegate or "auto")
        override = cmd.args.get("delegate")
        if override:
            # Command args are not signed: they may pick among built-in delegates, never name
            # a library to load (external delegates come only from a signed manifest or the
            # local config).
            if not isinstance(override, str) or not (
                override in ("auto", "cpu", "edgetpu") or override.startswith("edgetpu:")
            ):
                self._reject(
                    reply, Reason.INVALID,
                    f"delegate {override!r:.80} is not allowed in a command "
                    "(use auto, cpu or edgetpu[:device]; external delegates only via the "
                    "signed manifest or the agent config)",
                    manifest,
                )  # fmt: skip
                return
            delegate = override
        if delegate == "auto" and not override:
            delegate = self.default_delegate  # the board's own policy (config runtime.delegate)
        problems = self._compat_problems(manifest, delegate)
        if problems:
            self._reject(reply, Reason.INCOMPATIBLE, "; ".join(problems), manifest)
            return
        try:
            store.begin(manifest)
        except (ManifestError, StoreError) as exc:
            self._reject(reply, exc.code, exc.message, manifest)
            return
        store.record_release(manifest)
        gates = Gates.merge(self.default_gates, cmd.args.get("gates") or {})
        self.active = Install(manifest, reply, gates, delegate)
        self.host.reply(reply, ReplyStatus.ACCEPTED, None, "accepted", **_ref(manifest))
        self.host.event(EventKind.INSTALL_ACCEPTED, cmd_id=cmd.id, **_ref(manifest))
        self._continue()  # the first requests go out before the state is republished
        self.host.state_changed()

    def resume_staged(self) -> None:
        """After a restart: continue a transfer left in staging (only missing chunks move)."""
        if self.active is not None:
            return
        for manifest in self.host.store.staged():
            delegate = manifest.variant.delegate or self.default_delegate
            self.active = Install(manifest, None, self.default_gates, delegate)
            log.info("resuming the transfer of %s r%d", manifest.name, manifest.release)
            self.host.event(EventKind.INSTALL_PROGRESS, "resumed", **_ref(manifest))
            self._continue()
            return

    def _compat_problems(self, manifest: Manifest, delegate: str) -> list[str]:
        req = manifest.requirements
        problems = []
        if (req.accelerator == "edgetpu" or manifest.variant.delegate == "edgetpu") and not (
            self.host.has_edgetpu
        ):
            problems.append("the model needs an Edge TPU and this board has none")
        problems += operator_problems(
            manifest, self.host.runtime_name, self.host.runtime_version, delegate
        )
        return problems

    def _reject(self, reply: ReplyTo | None, code: str, message: str, m: Manifest | None) -> None:
        log.warning("deploy rejected (%s): %s", code, message)
        ref = _ref(m) if m else {}
        self.host.reply(reply, ReplyStatus.REJECTED, code, message, **ref)
        self.host.event(
            EventKind.REJECTED, code, message, cmd_id=reply.cmd_id if reply else None, **ref
        )

    # ---- transfer --------------------------------------------------------------------------
    def on_chunk(self, sha256: str, payload: bytes) -> None:
        a = self.active
        if a is None or a.phase != "downloading" or a.manifest.sha256 != sha256:
            self.stale_chunks += 1  # a duplicate or a late chunk of a finished transfer
            return
        frame = decode_chunk(payload, sha256)  # ProtocolError -> the caller reports it
        a.inflight.pop(frame.index, None)
        a.last_rx = time.monotonic()
        if a.first_chunk is None:
            a.first_chunk = a.last_rx
        try:
            fresh = self.host.store.write_chunk(sha256, frame.index, frame.data)
        except StoreError as exc:
            if exc.code == Reason.BAD_CHUNK:
                self._bad_chunk(a, frame.index)
                return
            raise
        if fresh:
            a.received_bytes += len(frame.data)
        crash_point(f"after_chunk:{frame.index}")
        self._continue()

    def _bad_chunk(self, a: Install, index: int) -> None:
        """Ask again for this one chunk only (the rest of the window is still on its way)."""
        a.corrupt_chunks += 1
        a.bad_by_index[index] = n = a.bad_by_index.get(index, 0) + 1
        if n > MAX_BAD_CHUNK:
            self._fail_install(
                a, Reason.BAD_CHUNK, f"chunk {index} failed its sha256 {n} times: giving up"
            )
            return
        log.warning("chunk %d of %s failed its hash: asking again", index, a.manifest.sha256)
        a.inflight[index] = time.monotonic()
        self.host.request_chunks(a.manifest.sha256, [index])

    def on_connected(self) -> None:
        """Back online. Chunks requested before the link went down were lost with it (QoS 0
        chunks) or come again from the broker (QoS 1, persistent session): asking for the
        whole window again at once would move the latter twice. So ask only for what is not
        already requested, and ask again for the earlier requests that are still missing
        ``reconnect_grace_s`` later (tick)."""
        a = self.active
        if a is None or a.phase != "downloading":
            return
        a.reconnected = time.monotonic()
        self._request_more(a)

    def _continue(self) -> None:
        a = self.active
        if a is None or a.phase != "downloading":
            return
        store = self.host.store
        try:
            # bytes already verified in models/ (a new release of last_good, a re-push after a
            # crash between finish and trial): there is no staging and nothing to fetch. Only
            # this agent writes models/, so once is enough.
            if not a.checked_models:
                a.checked_models = True
                if store.has_model(a.manifest.sha256):
                    self._finish_transfer(a)
                    return
            if store.remaining(a.manifest.sha256) == 0:
                self._finish_transfer(a)
                return
        except StoreError as exc:  # staging vanished or unreadable: end this install cleanly
            self._fail_install(a, exc.code, exc.message)
            return
        self._request_more(a)
        now = time.monotonic()
        if now - a.last_progress > 1.0:
            a.last_progress = now
            self.host.progress(
                {**a.summary(), "received_bytes": a.received_bytes, "size": a.manifest.size}
            )

    def _request_more(self, a: Install, *, force: bool = False) -> None:
        if force:
            a.inflight.clear()
            a.scan_from = 0
        window = self.window_chunks(a.manifest)
        if len(a.inflight) > window // 2:
            return  # refilled when half the window has arrived: a few large requests
        room = window - len(a.inflight)
        # from where the last request ended: a chunk lost on the way is asked for again by
        # the timeout (force, from 0), a corrupt one at once (_bad_chunk), so no rescan here
        want = self.host.store.next_missing(a.manifest.sha256, a.scan_from, room, a.inflight)
        if want:
            a.scan_from = want[-1] + 1
            now = time.monotonic()
            a.inflight.update((i, now) for i in want)
            self.host.request_chunks(a.manifest.sha256, want)

    def window_chunks(self, m: Manifest) -> int:
        """Chunks requested and not yet received, at most: ``window_bytes`` worth, >= 4."""
        return max(4, self.window_bytes // max(1, m.chunk_size))

    def tick(self) -> None:
        a = self.active
        if a is None:
            return
        now = time.monotonic()
        if a.phase == "downloading" and a.reconnected is not None:
            if now - a.reconnected > self.reconnect_grace_s:
                lost = sorted(i for i, t in a.inflight.items() if t < a.reconnected)
                a.reconnected = None
                if lost:
                    log.info("asking again for %d chunks lost with the connection", len(lost))
                    a.inflight.update((i, now) for i in lost)
                    self.host.request_chunks(a.manifest.sha256, lost)
        elif a.phase == "downloading" and a.inflight and now - a.last_rx > self.chunk_timeout_s:
            log.info("no chunk for %.1fs: asking again for the missing ones", now - a.last_rx)
            a.last_rx = now
            self._request_more(a, force=True)
        elif a.phase == "trial":
            self._check_trial(a, now)

    # ---- verify, probe ---------------------------------------------------------------------
    def _finish_transfer(self, a: Install) -> None:
        store, m = self.host.store, a.manifest
        # where the time went: waiting for the first chunk, moving the bytes, then the checks
        now = time.monotonic()
        timing: dict[str, Any] = {"transfer_s": round(now - a.started, 4)}
        if a.first_chunk is not None:
            timing["first_chunk_s"] = round(a.first_chunk - a.started, 4)
        try:
            store.flush(m.sha256)
            path = store.finish(m.sha256)
            from agent.runtime import compat, modelfile

            info = modelfile.inspect_operators(path)
            compat.ensure_compatible(
                info,
                self.host.runtime_name,
                self.host.runtime_version,
                "edgetpu" if info.is_edgetpu and self.host.has_edgetpu else "cpu",
            )
        except (StoreError, IncompatibleModelError, EdgeloopError) as exc:
            self._fail_install(a, exc.code, exc.message)
            return
        a.phase = "probing"
        self.host.event(
            EventKind.INSTALL_VERIFIED,
            **_ref(m),
            seconds=_since(a.started),
            **timing,
            corrupt_chunks=a.corrupt_chunks,
        )
        self.host.state_changed()
        from agent.runtime.sandbox import probe_model

        self.host.background(
            "probe",
            lambda: probe_model(
                path, a.delegate, timeout_s=self.probe_timeout_s, memory_mb=self.probe_memory_mb
            ),
            lambda result, error: self._probe_done(a, path, result, error),
        )

    def _probe_done(
        self, a: Install, path: Path, result: ProbeResult | None, exc: BaseException | None
    ) -> None:
        if self.active is not a:
            return
        if exc is not None or result is None or not result.ok:
            if exc is not None:
                message = str(exc)
            else:
                message = result.message if result is not None else "no probe result"
            sig = result.signal if result else None
            self._fail_install(
                a,
                Reason.PROBE_FAILED,
                message,
                signal=sig,
                probe=result.to_dict() if result else None,
            )
            return
        try:
            self.host.store.set_trial(a.manifest.sha256, a.manifest)
            server = self.host.start_trial(path, a.manifest, a.delegate)
        except EdgeloopError as load_error:
            self.host.store.abort_trial()
            self._fail_install(a, Reason.PROBE_FAILED, load_error.message)
            return
        a.phase = "trial"
        a.trial_started = time.monotonic()
        a.trial_server = server
        a.trial_window = LatencyWindow()
        server.attach(a.trial_window)
        self.host.event(
            EventKind.TRIAL_STARTED,
            **_ref(a.manifest),
            gates=a.gates.to_dict(),
            probe=result.to_dict(),
        )
        self.host.state_changed()
        crash_point("during_trial")

    def _fail_install(self, a: Install, code: str, message: str, **data: Any) -> None:
        log.warning("install of %s failed (%s): %s", a.manifest.name, code, message)
        self.host.store.abort(a.manifest.sha256)
        self.active = None
        self.host.state_changed()
        self.host.reply(a.reply, ReplyStatus.ERROR, code, message, **_ref(a.manifest))
        self.host.event(
            EventKind.REJECTED
            if code in (Reason.BAD_MODEL, Reason.BAD_CHUNK)
            else EventKind.ROLLED_BACK,
            code,
            message,
            **_ref(a.manifest),
            **data,
        )

    # ---- trial gates -----------------------------------------------------------------------
    def _check_trial(self, a: Install, now: float) -> None:
        server, window = a.trial_server, a.trial_window
        assert server is not None and window is not None and a.trial_started is not None
        g = a.gates
        elapsed = now - a.trial_started
        count = window.peek_count()
        while count + server.backlog() < g.min_inferences and server.backlog() < 16:
            if not server.submit_synthetic():
                break
        snap = window.peek()
        failure = None
        if snap.errors:
            failure = f"{snap.errors} inference error(s) during trial"
        elif snap.non_finite:
            failure = f"{snap.non_finite} inference(s) produced NaN or Inf"
        elif g.max_rss_mb is not None and self.host.rss_mb() > g.max_rss_mb:
            failure = f"RSS {self.host.rss_mb():.1f} MB exceeds the {g.max_rss_mb} MB gate"
        elif snap.inferences >= g.min_inferences and elapsed >= g.min_seconds:
            p95 = summarize(snap.latencies_ms).p95
            if g.p95_ms is not None and p95 > g.p95_ms:
                failure = f"p95 {p95:.3f} ms exceeds the {g.p95_ms} ms gate"
            else:
                self._commit(a, snap.inferences, p95)
                return
        elif elapsed > g.max_seconds:
            failure = f"only {snap.inferences} inferences in {elapsed:.0f}s (gate timeout)"
        if failure:
            self._rollback_trial(a, failure)

    def _commit(self, a: Install, inferences: int, p95: float) -> None:
        crash_point("before_trial_commit")
        self.host.store.commit_trial()
        self.host.end_trial(commit=True)
        self.active = None
        self.host.state_changed()  # retained state first: a host acting on the reply sees it
        data = {
            **_ref(a.manifest),
            "inferences": inferences,
            "p95_ms": round(p95, 3),
            "seconds": _since(a.started),
        }
        self.host.reply(a.reply, ReplyStatus.OK, "committed", "committed", **data)
        self.host.event(EventKind.COMMITTED, **data)
        self.host.store.gc()

    def _rollback_trial(self, a: Install, reason: str) -> None:
        log.warning("trial of %s failed: %s; rolling back", a.manifest.name, reason)
        self.host.store.abort_trial()
        self.host.end_trial(commit=False)
        self.active = None
        self.host.state_changed()
        self.host.reply(
            a.reply, ReplyStatus.ERROR, Reason.HEALTH_FAILED, reason, **_ref(a.manifest)
        )
        self.host.event(EventKind.ROLLED_BACK, Reason.HEALTH_FAILED, reason, **_ref(a.manifest))

    def abort_for_rollback(self) -> bool:
        """The rollback command arrived: drop whatever install is running. True if one was."""
        a = self.active
        if a is None:
            return False
        if a.phase == "trial":
            self._rollback_trial(a, "rollback command")
        else:
            self.host.store.abort(a.manifest.sha256)
            self.active = None
            self.host.event(
                EventKind.ROLLED_BACK, "rollback_command", "install abandoned", **_ref(a.manifest)
            )
            self.host.state_changed()
        return True


def _ref(m: Manifest) -> dict[str, Any]:
    return {"sha256": m.sha256, "name": m.name, "version": m.version, "release": m.release}


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)
