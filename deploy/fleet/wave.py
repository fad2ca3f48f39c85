"""One push to many devices as one wave: a signed manifest per device, one shared chunk stream.

:func:`push_wave` hands every device of ``manifests`` (device id -> its own manifest, signed and
addressed to it, all of the same bytes) to one :class:`~deploy.fleet.fleet_push.FleetPusher`
with no in-flight limit, so they are all announced together and share one run of the stream
``{p}/models/{sha256}/chunks`` (agent.wire.stream); each device repairs through its own
``need`` only what the stream passed without reaching it. So the host publishes about the
model's size once per wave, plus the repairs, instead of once per device. :class:`WaveResult`
is what that cost and how each device ended.

With ``stream=False`` it is the per-device pull (each device's needs answered on its own topic):
the baseline the egress figure compares against (deploy.sim.egress).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.wire.manifest import SignedManifest
from deploy.fleet.fleet_push import JOIN_WAIT_S, FleetPusher, PushJob
from deploy.mqtt import BrokerAddress
from deploy.push import PushResult


@dataclass
class WaveResult:
    """What a wave cost the host and how each device ended."""

    sha256: str
    size: int
    results: dict[str, PushResult]
    stream: bool
    stream_chunks: int = 0  # chunk messages on the shared stream
    stream_bytes: int = 0  # their data bytes
    repair_chunks: int = 0  # chunk messages on devices' own topics (needs answered)
    repair_bytes: int = 0
    seconds: float = 0.0

    @property
    def bytes_published(self) -> int:
        """Chunk data bytes the host published: the stream once plus every answered need."""
        return self.stream_bytes + self.repair_bytes

    @property
    def egress_ratio(self) -> float:
        """Host bytes published / model size (1.0 = the model sent once for the whole wave)."""
        return self.bytes_published / max(1, self.size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "devices": len(self.results),
            "committed": sum(r.ok for r in self.results.values()),
            "stream": self.stream,
            "stream_bytes": self.stream_bytes,
            "repair_bytes": self.repair_bytes,
            "repair_chunks": self.repair_chunks,
            "egress_ratio": round(self.egress_ratio, 4),
            "seconds": self.seconds,
        }


def push_wave(
    broker: BrokerAddress,
    model: Path | bytes,
    manifests: Mapping[str, SignedManifest],
    *,
    prefix: str = "edgeloop",
    stream: bool = True,
    join_wait_s: float = JOIN_WAIT_S,
    timeout_s: float = 600.0,
    gates: Mapping[str, Any] | None = None,
    command_expiry_s: int = 300,
    key: Any | None = None,
) -> WaveResult:
    """Deploy ``model`` to every device of ``manifests`` (all of the same bytes and chunk size)
    and wait for each verdict or ``timeout_s``. ValueError before anything is sent when the
    manifests name different bytes or the model is not the bytes they name."""
    data = model.read_bytes() if isinstance(model, Path) else model
    sha = _one_artifact(data, manifests)
    results = {
        d: PushResult(False, "timeout", None, "no verdict in time", sha, s.manifest.release)
        for d, s in manifests.items()
    }
    pusher = FleetPusher(
        broker,
        prefix=prefix,
        gates=gates,
        key=key,
        timeout_s=timeout_s,
        max_in_flight=len(manifests),
        command_expiry_s=command_expiry_s,
        stream=stream,
        join_wait_s=join_wait_s,
    )
    t0 = time.monotonic()
    with pusher:
        pusher.submit([PushJob(d, s, data) for d, s in manifests.items()])
        while pusher.busy:
            results.update(pusher.poll(0.2))
    st = pusher.stats
    return WaveResult(
        sha,
        len(data),
        results,
        stream,
        stream_chunks=st.stream_chunks,
        stream_bytes=st.stream_bytes,
        repair_chunks=st.repair_chunks,
        repair_bytes=st.repair_bytes,
        seconds=round(time.monotonic() - t0, 3),
    )


def _one_artifact(data: bytes, manifests: Mapping[str, SignedManifest]) -> str:
    """The sha256 every manifest of the wave names; ValueError unless there is exactly one
    (with one chunk size) and ``data`` has its size."""
    if not manifests:
        raise ValueError("a wave needs at least one device")
    firsts = {(s.manifest.sha256, s.manifest.chunk_size) for s in manifests.values()}
    if len(firsts) != 1:
        raise ValueError(
            "every manifest of a wave must name the same bytes and chunk size "
            f"(got {len(firsts)} different): push different models in separate waves"
        )
    m = next(iter(manifests.values())).manifest
    if len(data) != m.size:
        raise ValueError(f"the model has {len(data)} bytes, its manifest says {m.size}")
    return m.sha256
