"""The device daemon's core: composition and the one event loop that owns all state.

paho callbacks only enqueue (agent.mqtt.transport); the inference worker (agent.serving.server),
the load generator, the energy sampler, the outbox drainer and background jobs (the sandboxed
probe, an on-demand benchmark) run on their own threads and report back through the same queue.
The install state machine (agent.delivery.install) and the command verbs (agent.commands) run
here; what they send goes out through agent.mqtt.publisher. systemd's watchdog is pinged only
while the core loop, the inference worker and the MQTT thread all make progress.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from agent.board import hardware
from agent.commands import Commands
from agent.config import AgentConfig
from agent.delivery.cmdguard import CommandGuard
from agent.delivery.install import Gates, Installer
from agent.delivery.pointers import Pointer
from agent.delivery.space import StoreLimits
from agent.delivery.store import ModelStore
from agent.errors import EdgeloopError, ProtocolError, StoreError
from agent.mqtt.outbox import Outbox, OutboxDrainer
from agent.mqtt.publisher import Publisher
from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, TransportConfig
from agent.runtime import get_backend
from agent.runtime.delegates import LoadedModel, load_model
from agent.serving.requests import handle_infer
from agent.serving.server import LatencyWindow, LoadGenerator, Server
from agent.serving.telemetry import TelemetryBuilder, open_energy
from agent.system.crashpoints import crash_point
from agent.system.memtrim import release_free_memory
from agent.system.sdnotify import Notifier
from agent.wire.manifest import Manifest
from agent.wire.messages import (
    EventKind,
    ModelRef,
    ReplyStatus,
    ReplyTo,
    State,
)
from agent.wire.reasons import Reason
from agent.wire.topics import Topics
from agent.wire.trust import load_trust_keys

log = logging.getLogger(__name__)

TICK_S = 0.2


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.boot_id = uuid.uuid4().hex
        if cfg.runtime.edgetpu_library:  # where libedgetpu lives when not on the loader path
            os.environ["EDGELOOP_EDGETPU_LIB"] = cfg.runtime.edgetpu_library
        self.hardware = hardware.detect(cfg.hw_root)
        self.backend = get_backend(cfg.runtime.preference)
        self.runtime_name, self.runtime_version = self.backend.name, self.backend.version
        self.has_edgetpu = any(a.kind == "edgetpu" for a in self.hardware.accelerators)
        self.trust_keys = load_trust_keys(cfg.trust_keys)
        identity = (cfg.device_id, self.hardware.hardware_class())
        state = cfg.state_path
        self.store = ModelStore(
            state,
            StoreLimits.for_device(
                cfg.limits.max_model_mb, cfg.limits.disk_mb, cfg.telemetry.outbox_max_mb
            ),
            slot=cfg.slot,
            # staged chunks are made durable (fsync + bitmap) every 4 MiB: a power cut costs
            # at most 4 MiB of re-transfer, and a 14 MB install pays 4 fsync rounds, not 14
            fsync_every_bytes=4 << 20,
        )
        self.outbox = Outbox(
            state / "outbox.sqlite",
            max_bytes=int(cfg.telemetry.outbox_max_mb * 2**20),
            max_age_s=cfg.telemetry.outbox_max_age_s,
        )
        self.topics = Topics(cfg.broker.prefix, cfg.device_id)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.server: Server | None = None
        self.trial_server: Server | None = None
        self.loaded: LoadedModel | None = None
        self.trial_loaded: LoadedModel | None = None
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.out = Publisher(self.outbox, self.topics)
        self._idle_window = LatencyWindow()
        self._last_window: dict[str, Any] | None = None
        self._last_window_sha: str | None = None
        self._telemetry_interval = cfg.telemetry.interval_s
        self._next_telemetry = time.monotonic() + self._telemetry_interval
        self._loop_progress = time.monotonic()
        self.notifier = Notifier()
        meter = cfg.energy.meter
        self.energy = open_energy(meter, cfg.energy.idle_baseline_s) if meter else None
        self.telemetry = TelemetryBuilder(cfg.hw_root, self.energy)
        h = cfg.health
        self.installer = Installer(
            self,
            self.out,
            store=self.store,
            trust_keys=self.trust_keys,
            runtime=(self.runtime_name, self.runtime_version),
            has_edgetpu=self.has_edgetpu,
            identity=identity,
            require_targets=cfg.require_targets,
            default_gates=Gates.from_config(h),
            default_delegate=cfg.runtime.delegate,
            probe_timeout_s=h.probe_timeout_s,
            probe_memory_mb=h.probe_memory_mb,
            window_bytes=cfg.limits.transfer_window_kb * 1024,
        )
        self.loadgen = LoadGenerator(self._serving, cfg.loadgen.rate_hz)
        self.commands = Commands(
            self,
            self.out,
            store=self.store,
            installer=self.installer,
            guard=CommandGuard(state, self.trust_keys, *identity, clock=self.store.trusted_now),
            loadgen=self.loadgen,
            hw_root=cfg.hw_root,
            meter=self.energy,
        )
        tc = TransportConfig.for_device(
            cfg.broker,
            cfg.device_id,
            will_topic=self.topics.state,
            birth=self.out.birth_message,
            subscriptions=self.topics.device_subscriptions(),
        )
        self.transport = Transport(tc, self._on_message, self._on_connected)
        self.out.transport = self.transport
        self.drainer = OutboxDrainer(self.outbox, self.transport)
        self.outbox.add_full_listener(self._on_disk_full)

    # ---- thread-safe entry points (other threads only enqueue) --------------------------
    def _on_message(self, msg: IncomingMessage) -> None:
        self.events.put(("msg", msg))

    def _on_connected(self, up: bool) -> None:
        self.events.put(("conn", up))

    def stop(self) -> None:
        self._stop.set()
        self.events.put(("stop", None))

    def background(
        self, name: str, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
    ) -> None:
        def run() -> None:
            try:
                result, error = fn(), None
            except BaseException as exc:
                result, error = None, exc
            self.events.put(("call", lambda: done(result, error)))

        threading.Thread(target=run, name=f"bg-{name}", daemon=True).start()

    # ---- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        self._recover()
        self.transport.start()
        self.drainer.start()
        self.notifier.ready(f"device {self.cfg.device_id}")
        release_free_memory()  # what start-up (imports, hardware probe) freed
        next_ping = 0.0
        while not self._stop.is_set():
            try:
                kind, payload = self.events.get(timeout=TICK_S)
                self._dispatch(kind, payload)
            except queue.Empty:
                pass
            except Exception:  # a bug in one handler must not stop the device
                log.exception("unexpected error handling an event")
            now = time.monotonic()
            self._loop_progress = now
            try:
                self._periodic(now)
            except Exception:  # e.g. a full disk under a commit: retried next tick
                log.exception("unexpected error in the periodic work")
            if self.notifier.watchdog_s and now >= next_ping and self._healthy(now):
                self.notifier.watchdog()
                next_ping = now + self.notifier.watchdog_s / 2
        self._shutdown()
        return 0

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "msg":
            self._handle_message(payload)
        elif kind == "conn":
            if payload:
                self.installer.on_connected()
        elif kind == "call":
            payload()

    def _periodic(self, now: float) -> None:
        try:
            self.installer.tick()
        finally:  # a failing tick (a full disk under a commit) must not stop the telemetry
            if now >= self._next_telemetry:
                self._next_telemetry = now + self._telemetry_interval
                self._emit_telemetry()

    def _healthy(self, now: float) -> bool:
        """All loops make progress: the core (here), inference worker, MQTT thread."""
        # A loop stalled for longer than the watchdog interval is what the operator's
        # WatchdogSec calls unhealthy: stop pinging, systemd restarts us one interval later.
        # (2 s floor: an idle worker reports progress every second.)
        wd = self.notifier.watchdog_s
        limit = max(2.0, wd) if wd else max(30.0, 3 * self._telemetry_interval)
        for server in (self.server, self.trial_server):
            if server is not None and now - server.last_progress > limit:
                return False
        return self.transport.running

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.loadgen.stop()
        for server in (self.trial_server, self.server):
            if server is not None:
                server.stop()
        self.drainer.stop()
        self.transport.stop()
        if self.energy is not None:
            self.energy.stop()
        self.outbox.close()
        self.store.close()
        self.notifier.close()

    # ---- start-up recovery ------------------------------------------------------------------
    def _recover(self) -> None:
        rec = self.store.recover()
        if rec.rolled_back is not None:
            self.out.event(
                EventKind.ROLLED_BACK,
                Reason.CRASHED_IN_TRIAL,
                "the agent stopped during the trial; rolled back at start",
                **rec.rolled_back.ref(),
            )
        if rec.actions:
            self.out.event(EventKind.RECOVERED, "ok", ", ".join(rec.actions), **rec.to_dict())
        cur = self.store.current()
        while cur is not None:
            try:
                self.loaded, self.server = self._load(cur)
                break
            except EdgeloopError as exc:
                log.error("current model %s does not load (%s): rolling back", cur.name, exc)
                why = f"current model failed to load: {exc}"
                self.out.event(EventKind.ROLLED_BACK, exc.code, why)
                try:
                    cur = self.store.rollback()
                except StoreError:
                    cur = None
        self.installer.resume_staged()
        self.state_changed()

    def _load(self, ptr: Pointer) -> tuple[LoadedModel, Server]:
        delegate = self.cfg.runtime.delegate
        manifest_delegate = ptr.manifest.variant.delegate
        if manifest_delegate and manifest_delegate != "auto":
            delegate = manifest_delegate
        return self._load_path(self.store.model_path(ptr.sha256), ptr.manifest, delegate)

    def _load_path(self, path: Path, m: Manifest, delegate: str) -> tuple[LoadedModel, Server]:
        loaded = load_model(
            path,
            delegate,
            threads=self.cfg.runtime.threads or None,
            hardware=self.hardware,
            backend=self.backend,
        )
        ref = ModelRef(m.sha256, m.name, m.version, m.release, m.variant.to_dict(), loaded.delegate)
        return loaded, Server(loaded.interpreter, ref.to_dict())

    # ---- InstallHost --------------------------------------------------------------------
    def start_trial(self, path: Path, manifest: Manifest, delegate: str) -> Server:
        self.trial_loaded, self.trial_server = self._load_path(path, manifest, delegate)
        return self.trial_server

    def end_trial(self, commit: bool) -> None:
        trial, self.trial_server = self.trial_server, None
        trial_loaded, self.trial_loaded = self.trial_loaded, None
        if commit:
            old, self.server, self.loaded = self.server, trial, trial_loaded
            if old is not None:
                old.stop()
        elif trial is not None:
            trial.stop()

    def rss_mb(self) -> float:
        return float(self._proc.memory_info().rss) / 2**20

    def _serving(self) -> Server | None:
        return self.trial_server or self.server

    def state_changed(self) -> None:
        self.out.publish_state(self.state())

    def state(self) -> State:
        cur, last = self.store.current(), self.store.held("last_good")
        install = self.installer.state()
        if self.loaded is not None:
            install = install | {"loaded": self.loaded.to_dict()}
        return State(
            online=True,
            ts=round(time.time(), 3),
            boot_id=self.boot_id,
            agent_version=__version__,
            runtime={"name": self.runtime_name, "version": self.runtime_version},
            hardware=self.hardware.to_dict(),
            hardware_class=self.hardware.hardware_class(),
            model=cur.model_ref(self.serving_delegate()) if cur else None,
            install=install,
            last_window=self._last_window,
            disk=self.outbox.disk_report(),
            slot=self.cfg.slot,
            slot_release=self.store.slot_release(),
            last_good=last.model_ref() if last else None,
        )

    def _on_disk_full(self, full: bool) -> None:
        self.out.disk_full(full)
        self.state_changed()

    # ---- messages ---------------------------------------------------------------------------
    def _handle_message(self, msg: IncomingMessage) -> None:
        try:
            if (sha := self.topics.stream_sha(msg.topic)) is not None:  # shared model stream
                self.installer.on_chunk(sha, msg.payload, stream=True)
                return
            parsed = self.topics.parse(msg.topic)
            if parsed.kind == "chunks" and parsed.arg:
                self.installer.on_chunk(parsed.arg, msg.payload)
            elif parsed.kind == "cmd" and parsed.arg:
                self.commands.handle(parsed.arg, msg)
            elif parsed.kind == "infer":
                self._handle_infer(msg)
        except (ProtocolError, EdgeloopError) as exc:
            self._rejected(msg, exc)
            if msg.response_topic:
                to = ReplyTo("?", "?", msg.response_topic, msg.correlation_data)
                self.out.reply(to, ReplyStatus.REJECTED, exc.code, exc.message)

    # ---- CommandHost -----------------------------------------------------------------------
    def serving_delegate(self) -> str | None:
        return self.loaded.delegate if self.loaded else None

    def set_telemetry_interval(self, seconds: float | None) -> float:
        if seconds is not None:
            self._telemetry_interval = seconds
            self._next_telemetry = time.monotonic() + seconds
        return self._telemetry_interval

    def _handle_infer(self, msg: IncomingMessage) -> None:
        limit = self.cfg.limits.max_payload_kb * 1024
        exc = handle_infer(self._serving(), msg, limit, self.transport.publish)
        if exc is not None:
            self._rejected(msg, exc)

    def _rejected(self, msg: IncomingMessage, exc: EdgeloopError) -> None:
        log.warning("rejected input on %s: %s", msg.topic, exc)
        self.out.event(EventKind.INPUT_REJECTED, exc.code, exc.message, topic=msg.topic[:200])

    # ---- telemetry ---------------------------------------------------------------------------
    def _emit_telemetry(self) -> None:
        server = self._serving()
        snap = server.window.drain() if server is not None else self._idle_window.drain()
        loaded = self.trial_loaded if server is self.trial_server else self.loaded
        # The first window after the serving model changed holds the switch itself (load,
        # first inferences, trial traffic): flagged so the host does not judge the model by it.
        sha = server.meta.get("sha256") if server is not None else None
        warmup = sha != self._last_window_sha
        self._last_window_sha = sha
        record = self.telemetry.build(
            seq=0,
            snap=snap,
            model=ModelRef.from_meta(server.meta) if server else None,
            outbox_dropped=self.outbox.dropped,
            boot_id=self.boot_id,
            trial=server is not None and server is self.trial_server,
            warmup=warmup,
            threads=loaded.threads if loaded else None,
        )
        self._last_window = record.summary()
        crash_point("before_telemetry")
        self.outbox.append(self.topics.telemetry, lambda seq: replace(record, seq=seq).to_json())
        self.state_changed()
