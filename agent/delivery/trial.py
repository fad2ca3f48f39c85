"""After the transfer: verify the bytes and the model's operators, probe it in the sandbox, then
serve it on trial until its health gates (agent.delivery.checks.Gates) pass (commit) or fail
(roll back to the last good model).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.delivery.install_base import Install, InstallerBase, _ref, _since
from agent.errors import EdgeloopError, IncompatibleModelError, StoreError
from agent.serving.server import LatencyWindow
from agent.serving.stats import summarize
from agent.system.crashpoints import crash_point
from agent.wire.messages import EventKind, ReplyStatus
from agent.wire.reasons import Reason

if TYPE_CHECKING:  # the install-only modules load on the first deploy (idle RSS, ~5 MB)
    from agent.runtime.sandbox import ProbeResult

log = logging.getLogger("agent.delivery.install")  # the installer's lines keep their name


class Trial(InstallerBase):
    """The verify, probe and trial phases of the installer, up to the commit or the rollback."""

    # ---- verify, probe ---------------------------------------------------------------------
    def _finish_transfer(self, a: Install) -> None:
        store, m = self.store, a.manifest
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
                self.runtime_name,
                self.runtime_version,
                "edgetpu" if info.is_edgetpu and self.has_edgetpu else "cpu",
            )
        except (StoreError, IncompatibleModelError, EdgeloopError) as exc:
            self._fail_install(a, exc.code, exc.message)
            return
        a.phase = "probing"
        self.out.event(
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
            self.store.set_trial(a.manifest.sha256, a.manifest)
            server = self.host.start_trial(path, a.manifest, a.delegate)
        except EdgeloopError as load_error:
            self.store.abort_trial()
            self._fail_install(a, Reason.PROBE_FAILED, load_error.message)
            return
        a.phase = "trial"
        a.trial_started = time.monotonic()
        a.trial_server = server
        a.trial_window = LatencyWindow()
        server.attach(a.trial_window)
        self.out.event(
            EventKind.TRIAL_STARTED,
            **_ref(a.manifest),
            gates=a.gates.to_dict(),
            probe=result.to_dict(),
        )
        self.host.state_changed()
        crash_point("during_trial")

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
        self.store.commit_trial()
        self.host.end_trial(commit=True)
        self.active = None
        self.host.state_changed()  # retained state first: a host acting on the reply sees it
        data = {
            **_ref(a.manifest),
            "inferences": inferences,
            "p95_ms": round(p95, 3),
            "seconds": _since(a.started),
        }
        self.out.reply(a.reply, ReplyStatus.OK, "committed", "committed", **data)
        self.out.event(EventKind.COMMITTED, **data)
        self.store.gc()

    def _rollback_trial(self, a: Install, reason: str) -> None:
        log.warning("trial of %s failed: %s; rolling back", a.manifest.name, reason)
        self.store.abort_trial()
        self.host.end_trial(commit=False)
        self.active = None
        self.host.state_changed()
        self.out.reply(a.reply, ReplyStatus.ERROR, Reason.HEALTH_FAILED, reason, **_ref(a.manifest))
        self.out.event(EventKind.ROLLED_BACK, Reason.HEALTH_FAILED, reason, **_ref(a.manifest))
