"""The device daemon's core: one thread owns all state and consumes an event queue.

paho callbacks only enqueue (agent.mqtt.transport); the inference worker (agent.serving.server),
the load
generator, the energy sampler, the outbox drainer and background jobs (the sandboxed probe, an
on-demand benchmark) run on their own threads and report back through the same queue. The
install state machine (agent.delivery.install) runs here. systemd's watchdog is pinged only while
the
core loop, the inference worker and the MQTT thread all make progress.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from agent.board import hardware
from agent.config import AgentConfig
from agent.delivery.cmdguard import CommandGuard
from agent.delivery.install import Gates, Installer, ReplyTo
from agent.delivery.store import ModelStore, Pointer, StoreLimits
from agent.errors import EdgeloopError, ProtocolError, StoreError
from agent.mqtt.outbox import Outbox, OutboxDrainer
from agent.mqtt.transport import Transport
from agent.mqtt.types import IncomingMessage, TlsConfig, TransportConfig, WillConfig
from agent.runtime import get_backend
from agent.runtime.delegates import LoadedModel, load_model
from agent.serving.server import (
    JSON_CONTENT_TYPE,
    InferenceJob,
    LatencyWindow,
    LoadGenerator,
    Server,
    decode_request,
)
from agent.serving.telemetry import TelemetryBuilder
from agent.system.crashpoints import crash_point
from agent.system.memtrim import release_free_memory
from agent.system.sdnotify import Notifier
from agent.wire.chunks import compact_ranges
from agent.wire.codec import canonical_json
from agent.wire.manifest import Manifest, load_trust_keys
from agent.wire.messages import Command, Event, EventKind, ModelRef, NeedRequest, ReplyStatus, State
from agent.wire.reasons import Reason
from agent.wire.topics import Topics

log = logging.getLogger(__name__)

TICK_S = 0.2
SEEN_COMMANDS = 256


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
        self.cmd_guard = CommandGuard(  # signed commands (issue 10)
            cfg.state_path, self.trust_keys, cfg.device_id, self.hardware.hardware_class()
        )
        state = cfg.state_path
        self.store = ModelStore(
            state,
            StoreLimits(
                max_model_bytes=int(cfg.limits.max_model_mb * 2**20),
                max_store_bytes=int(cfg.limits.disk_mb * 2**20),
                # disk full (issue 10): an install leaves room for the outbox's whole bound
                min_free_bytes=int(cfg.telemetry.outbox_max_mb * 2**20) + (1 << 20),
            ),
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
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._birth = b""
        self._birth_lock = threading.Lock()
        self._idle_window = LatencyWindow()
        self._last_window: dict[str, Any] | None = None
        self._last_window_sha: str | None = None
        self._telemetry_interval = cfg.telemetry.interval_s
        self._next_telemetry = time.monotonic() + self._telemetry_interval
        self._loop_progress = time.monotonic()
        self.notifier = Notifier()
        self.energy = self._open_energy()
        self.telemetry = TelemetryBuilder(cfg.hw_root, self.energy)
        h = cfg.health
        self.installer = Installer(
            self,
            default_gates=Gates(
                h.min_inferences, h.min_seconds, h.max_seconds, h.p95_ms, h.max_rss_mb
            ),
            default_delegate=cfg.runtime.delegate,
            probe_timeout_s=h.probe_timeout_s,
            probe_memory_mb=h.probe_memory_mb,
            window_bytes=cfg.limits.transfer_window_kb * 1024,
        )
        self.loadgen = LoadGenerator(self._serving, cfg.loadgen.rate_hz)
        self.transport = Transport(self._transport_config(), self._on_message, self._on_connected)
        self.drainer = OutboxDrainer(self.outbox, self.transport)
        self.outbox.add_full_listener(self._on_disk_full)  # disk full (issue 10)

    # ---- setup ---------------------------------------------------------------------------
    def _transport_config(self) -> TransportConfig:
        b = self.cfg.broker
        tls = TlsConfig(b.tls_ca, b.tls_cert, b.tls_key) if b.tls_ca else None
        return TransportConfig(
            host=b.host,
            port=b.port,
            client_id=f"edgeloop-{self.cfg.device_id}",
            username=b.username or None,
            password=b.password or None,
            tls=tls,
            keepalive=b.keepalive_s,
            session_expiry_s=b.session_expiry_s,
            clean_start=False,
            will=WillConfig(self.topics.state),
            birth=self._birth_message,
            subscriptions=[(f, 1) for f in self.topics.device_subscriptions()],
            reconnect_min_s=b.reconnect_min_s,
            reconnect_max_s=b.reconnect_max_s,
        )

    def _open_energy(self) -> Any:
        spec = self.cfg.energy.meter
        if not spec:
            return None
        try:
            from agent.energy import EnergySampler, open_meter

            sampler = EnergySampler(open_meter(spec), baseline_s=self.cfg.energy.idle_baseline_s)
            return sampler.start()
        except EdgeloopError as exc:
            log.error("energy meter %s unavailable: %s (telemetry goes on without it)", spec, exc)
            return None

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
            self._periodic(now)
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
        self.installer.tick()
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
        thread = getattr(self.transport, "_thread", None)
        return thread is None or thread.is_alive()

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
            self.event(
                EventKind.ROLLED_BACK,
                Reason.CRASHED_IN_TRIAL,
                "the agent stopped during the trial; rolled back at start",
                sha256=rec.rolled_back.sha256,
                name=rec.rolled_back.name,
                version=rec.rolled_back.version,
                release=rec.rolled_back.release,
            )
        if rec.actions:
            self.event(EventKind.RECOVERED, "ok", ", ".join(rec.actions), **rec.to_dict())
        cur = self.store.current()
        while cur is not None:
            try:
                self.loaded, self.server = self._load(cur, self.cfg.runtime.delegate)
                break
            except EdgeloopError as exc:
                log.error("current model %s does not load (%s): rolling back", cur.name, exc)
                self.event(EventKind.ROLLED_BACK, exc.code, f"current model failed to load: {exc}")
                try:
                    cur = self.store.rollback()
                except StoreError:
                    cur = None
        self.installer.resume_staged()
        self.state_changed()

    def _load(self, ptr: Pointer, delegate: str) -> tuple[LoadedModel, Server]:
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
        meta = {
            "sha256": m.sha256,
            "name": m.name,
            "version": m.version,
            "release": m.release,
            "variant": m.variant.to_dict(),
            "delegate": loaded.delegate,
        }
        return loaded, Server(loaded.interpreter, meta)

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

    def event(self, kind: str, code: str = "ok", message: str = "", **data: Any) -> None:
        body = {k: v for k, v in data.items() if v is not None}
        ts = round(time.time(), 3)
        # seq = the outbox's durable sequence number: one gapless series per device across
        # events and telemetry, monotonic across restarts (the host dedups by device + seq).
        self.outbox.append(
            self.topics.events, lambda seq: Event(kind, code, message, body, ts, seq).to_json()
        )

    def progress(self, data: dict[str, Any]) -> None:
        ev = Event(EventKind.INSTALL_PROGRESS, "ok", "", data, ts=round(time.time(), 3))
        self.transport.publish(self.topics.events, ev.to_json(), qos=0)

    def reply(
        self,
        to: ReplyTo | None,
        status: str,
        code: str | None = None,
        message: str = "",
        **data: Any,
    ) -> None:
        if to is None or not to.topic:
            return
        body = {
            "id": to.cmd_id,
            "verb": to.verb,
            "status": str(status),
            "message": message,
            "data": data,
        } | ({"code": str(code)} if code else {})
        self.transport.publish(
            to.topic,
            canonical_json(body),
            qos=1,
            correlation_data=to.correlation,
            content_type=JSON_CONTENT_TYPE,
        )

    def request_chunks(self, sha256: str, indexes: list[int]) -> None:
        need = NeedRequest.from_ranges(sha256, compact_ranges(indexes))
        self.transport.publish(self.topics.need, need.to_json(), qos=1)

    def state_changed(self) -> None:
        with self._birth_lock:
            self._birth = self._state().to_json()
            payload = self._birth
        if self.transport.connected:
            self.transport.publish(self.topics.state, payload, qos=1, retain=True)

    def _birth_message(self) -> tuple[str, bytes]:
        with self._birth_lock:
            return self.topics.state, self._birth

    def _state(self) -> State:
        model = None
        cur = self.store.current()
        if cur is not None:
            model = ModelRef(
                cur.sha256,
                cur.name,
                cur.version,
                cur.release,
                cur.manifest.variant.to_dict(),
                self.loaded.delegate if self.loaded else None,
            )
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
            model=model,
            install=install,
            last_window=self._last_window,
            disk=self.outbox.disk_report(),  # disk full (issue 10)
        )

    @property
    def identity(self) -> tuple[str, str | None]:
        """(device id, hardware class): whom a manifest must be addressed to (issue 10)."""
        return self.cfg.device_id, self.hardware.hardware_class()

    def _on_disk_full(self, full: bool) -> None:
        """disk full (issue 10): the outbox cannot take the event, so it goes out directly."""
        report = self.outbox.disk_report()
        message = "the state disk is full" if full else "the state disk has space again"
        ev = Event(EventKind.DISK_FULL, "disk_full" if full else "ok", message, report or {})
        self.transport.publish(self.topics.events, ev.to_json(), qos=1)
        self.state_changed()

    # ---- messages ---------------------------------------------------------------------------
    def _handle_message(self, msg: IncomingMessage) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
            if parsed.kind == "chunks" and parsed.arg:
                self.installer.on_chunk(parsed.arg, msg.payload)
            elif parsed.kind == "cmd" and parsed.arg:
                self._handle_command(parsed.arg, msg)
            elif parsed.kind == "infer":
                self._handle_infer(msg)
        except (ProtocolError, EdgeloopError) as exc:
            log.warning("rejected input on %s: %s", msg.topic, exc)
            self.event(EventKind.INPUT_REJECTED, exc.code, exc.message, topic=msg.topic[:200])
            if msg.response_topic:
                to = ReplyTo("?", "?", msg.response_topic, msg.correlation_data)
                self.reply(to, ReplyStatus.REJECTED, exc.code, exc.message)

    def _handle_command(self, verb: str, msg: IncomingMessage) -> None:
        cmd = Command.from_json(msg.payload, verb)
        to = ReplyTo(cmd.id, verb, msg.response_topic, msg.correlation_data)
        try:
            self.cmd_guard.check(cmd)  # signed commands (issue 10)
        except ProtocolError as exc:
            log.warning("refused cmd/%s %s: %s", verb, cmd.id, exc)
            self.event(EventKind.INPUT_REJECTED, exc.code, exc.message, command=verb, id=cmd.id)
            self.reply(to, ReplyStatus.REJECTED, exc.code, exc.message)
            return
        if verb == "deploy":
            _check_deploy_args(cmd.args)
        if cmd.id in self._seen and verb != "deploy":  # deploy dedups by release (P4, P16)
            self.reply(to, ReplyStatus.DUPLICATE, None, "command already handled")
            return
        self._seen[cmd.id] = None
        while len(self._seen) > SEEN_COMMANDS:
            self._seen.popitem(last=False)
        handlers: dict[str, Callable[[], None]] = {
            "deploy": lambda: self.installer.on_deploy(cmd, to),
            "rollback": lambda: self._cmd_rollback(to),
            "bench": lambda: self._cmd_bench(cmd, to),
            "config": lambda: self._cmd_config(cmd, to),
            "rebirth": lambda: self._cmd_rebirth(to),
            "state": lambda: self.reply(
                to, ReplyStatus.OK, None, "", state=self._state().to_dict()
            ),
        }
        handlers[verb]()

    def _cmd_rollback(self, to: ReplyTo) -> None:
        if self.installer.abort_for_rollback():
            self.reply(to, ReplyStatus.OK, None, "install abandoned")
            return
        try:
            ptr = self.store.rollback()
        except StoreError as exc:
            self.reply(to, ReplyStatus.REJECTED, exc.code, exc.message)
            return
        assert ptr is not None
        loaded, server = self._load(ptr, self.cfg.runtime.delegate)
        old, self.server, self.loaded = self.server, server, loaded
        if old is not None:
            old.stop()
        self.event(
            EventKind.ROLLED_BACK,
            "rollback_command",
            "rolled back to last good",
            sha256=ptr.sha256,
            name=ptr.name,
            version=ptr.version,
            release=ptr.release,
        )
        self.reply(to, ReplyStatus.OK, None, "rolled back", sha256=ptr.sha256)
        self.state_changed()

    def _cmd_bench(self, cmd: Command, to: ReplyTo) -> None:
        cur = self.store.current()
        if cur is None:
            self.reply(to, ReplyStatus.REJECTED, "no_model", "no model installed")
            return
        from agent.serving.bench import benchmark

        args = cmd.args
        path = self.store.model_path(cur.sha256)
        delegate = str(args.get("delegate") or (self.loaded.delegate if self.loaded else "auto"))
        self.reply(to, ReplyStatus.ACCEPTED, None, "benchmark started")

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                code = exc.code if isinstance(exc, EdgeloopError) else "bench_failed"
                self.reply(to, ReplyStatus.ERROR, code, str(exc))
                self.event(EventKind.BENCH_RESULT, code, str(exc), cmd_id=cmd.id)
                return
            data = result.to_dict()
            self.reply(to, ReplyStatus.OK, None, "benchmark done", result=data)
            self.event(EventKind.BENCH_RESULT, cmd_id=cmd.id, sha256=cur.sha256, result=data)

        self.background(
            "bench",
            lambda: benchmark(
                path,
                delegate,
                threads=args.get("threads"),
                runs=int(args.get("runs") or 50),
                hw_root=self.cfg.hw_root,
                meter=self.energy,
            ),
            done,
        )

    def _cmd_config(self, cmd: Command, to: ReplyTo) -> None:
        args = cmd.args
        if "telemetry_interval_s" in args:
            self._telemetry_interval = float(args["telemetry_interval_s"])
            self._next_telemetry = time.monotonic() + self._telemetry_interval
        loadgen = args.get("loadgen")
        if isinstance(loadgen, dict):
            enabled = bool(loadgen.get("enabled", True))
            self.loadgen.set_rate(float(loadgen.get("rate_hz", 0)) if enabled else 0.0)
        applied = {
            "telemetry_interval_s": self._telemetry_interval,
            "loadgen_rate_hz": self.loadgen.rate_hz,
        }
        self.reply(to, ReplyStatus.OK, None, "applied", **applied)

    def _cmd_rebirth(self, to: ReplyTo) -> None:
        self.state_changed()
        self.reply(to, ReplyStatus.OK, None, "state published")

    def _handle_infer(self, msg: IncomingMessage) -> None:
        server = self._serving()
        to = msg.response_topic
        corr = msg.correlation_data

        def reply(body: dict[str, Any] | None, raw: bytes | None, ctype: str) -> None:
            if not to:
                return
            payload = raw if raw is not None else json.dumps(body).encode()
            self.transport.publish(to, payload, qos=1, correlation_data=corr, content_type=ctype)

        if server is None:
            reply(
                {"ok": False, "code": "no_model", "message": "no model installed"},
                None,
                JSON_CONTENT_TYPE,
            )
            return
        limit = self.cfg.limits.max_payload_kb * 1024
        try:
            if len(msg.payload) > limit:
                raise ProtocolError(
                    f"inference request of {len(msg.payload)} bytes exceeds {limit} bytes",
                    code=Reason.TOO_LARGE,
                    hint="raise limits.max_payload_kb or send a smaller .npy",
                )
            inputs, as_npy = decode_request(msg.payload, msg.content_type)
        except EdgeloopError as exc:  # reply in the inference format, then the event
            reply({"ok": False, **exc.to_dict()}, None, JSON_CONTENT_TYPE)
            log.warning("rejected input on %s: %s", msg.topic, exc)
            self.event(EventKind.INPUT_REJECTED, exc.code, exc.message, topic=msg.topic[:200])
            return
        if not server.submit(InferenceJob(inputs, reply, as_npy)):
            reply(
                {"ok": False, "code": Reason.BUSY, "message": "inference queue full"},
                None,
                JSON_CONTENT_TYPE,
            )

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
            model=dict(server.meta) if server else None,
            outbox_dropped=self.outbox.dropped,
            extra={
                "boot_id": self.boot_id,
                "trial": server is not None and server is self.trial_server,
                "warmup": warmup,
                "threads": loaded.threads if loaded else None,
            },
        )
        self._last_window = {
            k: record.get(k) for k in ("ts", "inferences", "latency_ms", "throughput", "energy")
        }
        crash_point("before_telemetry")
        self.outbox.append(self.topics.telemetry, lambda seq: canonical_json(record | {"seq": seq}))
        self.state_changed()


def _check_deploy_args(args: dict[str, Any]) -> None:
    """The unsigned deploy arguments next to the manifest: wrong types are malformed input."""
    gates, delegate = args.get("gates"), args.get("delegate")
    if gates is not None and not isinstance(gates, dict):
        raise ProtocolError("cmd/deploy: args.gates must be an object")
    if delegate is not None and not (isinstance(delegate, str) and len(delegate) <= 512):
        raise ProtocolError("cmd/deploy: args.delegate must be a string")


def run_agent(cfg: AgentConfig) -> int:
    agent = Agent(cfg)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()
