"""Host egress of one wave to simulated devices: the shared stream against per-device pulls.

:func:`compare_egress` starts ``devices`` simulated devices (deploy.sim.launch, the agent's wire
code), pushes one model to all of them as one wave twice, once with each device pulling its own
chunks and once through the shared stream ``{p}/models/{sha256}/chunks`` (deploy.fleet.wave), and
reports host bytes published / model size for each. tests/bench_fleet.py ``--egress`` runs it at
200 devices; tests/test_shared_stream.py at a few.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.wire.manifest import DEFAULT_CHUNK_SIZE, SignedManifest
from agent.wire.manifest_signing import model_fields, sign_manifest
from deploy.fleet.wave import push_wave
from deploy.mqtt import BrokerAddress
from deploy.sim.fleet import FleetSpec
from deploy.sim.launch import Launcher


def wave_manifests(
    data: bytes,
    key: Any,
    devices: Sequence[str],
    *,
    name: str,
    release: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ttl_s: int = 3600,
) -> dict[str, SignedManifest]:
    """One manifest per device, addressed to it (``targets.devices``), all of ``data``."""
    fields = model_fields(data, chunk_size)
    now = int(time.time())
    out = {}
    for device in devices:
        body = dict(
            fields,
            name=name,
            version=str(release),
            release=release,
            created=now,
            expires=now + ttl_s,
            targets={"devices": [device]},
        )
        out[device] = sign_manifest(body, key)
    return out


def compare_egress(
    broker: BrokerAddress,
    key: Any,
    trust_pub: Path,
    *,
    devices: int = 200,
    data: bytes,
    processes: int = 2,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Both waves to the same simulated fleet; returns each wave's
    :meth:`~deploy.fleet.wave.WaveResult.to_dict` (``egress_ratio`` = host bytes published /
    model size) under ``pull`` and ``stream``."""
    spec = FleetSpec(
        broker.host,
        broker.port,
        0,
        devices,
        devices,
        trust=(str(trust_pub),),
        telemetry=False,
        id_prefix="egress-",
    )
    ids = [spec.device_id(i) for i in range(devices)]
    out: dict[str, Any] = {"devices": devices, "model_bytes": len(data), "chunk_size": chunk_size}
    with Launcher(spec, processes) as sim:
        if not sim.wait_connected(120):
            raise RuntimeError(f"the simulated devices did not all connect: {sim.counters()}")
        for release, (mode, stream) in enumerate((("pull", False), ("stream", True)), start=1):
            manifests = wave_manifests(
                data, key, ids, name="egress", release=release, chunk_size=chunk_size
            )
            wave = push_wave(broker, data, manifests, stream=stream, timeout_s=timeout_s)
            out[mode] = wave.to_dict()
    return out
