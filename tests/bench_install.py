"""The device's own cost of an install, without the network (not collected by pytest).

    /work/venv/bin/python tests/bench_install.py [--rounds 5] [--extra-mb 0]

An in-process agent (the fuzz tests' harness: real store, real installer, no broker) is handed
a signed deploy of MobileNet v2 fp32 (13.9 MB; ``--extra-mb`` appends random bytes after the
flatbuffer), then every 64 KiB chunk message in order through the same handler the MQTT thread
feeds. Timed from the first chunk to the end of the transfer phase (per-chunk sha256, pwrite,
the staging persists, the whole-file sha256, the move into models/ and the operator check); the
probe child and the trial are not included. Prints wall and CPU time per install (median over
rounds) and the MB/s the device could absorb with an infinitely fast link.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.mqtt.types import IncomingMessage
from agent.wire.chunks import encode_chunk
from agent.wire.codec import canonical_json
from deploy.push import build_manifest
from tests.modelzoo import mobilenet_v2
from tests.test_handlers_fuzz import BASE, harness


def one_install(blob: bytes) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory(prefix="bench-install-") as d, harness(Path(d)) as h:
        path = Path(d) / "model.tflite"
        path.write_bytes(blob)
        signed = build_manifest(path, h.key, name="mobilenet", version="1", release=1)
        m = signed.manifest
        doc = {"id": "deploy-1", "args": {"manifest": json.loads(signed.to_json())}}
        h.send(f"{BASE}/cmd/deploy", canonical_json(doc))
        topic = f"{BASE}/chunks/{m.sha256}"
        cs = m.chunk_size
        messages = [
            IncomingMessage(topic, encode_chunk(m.sha256, i, blob[i * cs : (i + 1) * cs]),
                            0, False, None, None, None, (), None)
            for i in range(m.chunk_count)
        ]  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        for msg in messages:
            h.agent._handle_message(msg)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        active = h.agent.installer.active
        phase = active.phase if active is not None else "none"
        return wall, cpu, phase


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra-mb", type=float, default=0.0)
    args = ap.parse_args()
    blob = mobilenet_v2("fp32").read_bytes() + os.urandom(int(args.extra_mb * 1e6))
    walls, cpus = [], []
    for _ in range(args.rounds):
        wall, cpu, phase = one_install(blob)
        if phase != "probing":  # the transfer phase ended and the probe was started
            raise RuntimeError(f"the install did not reach the probe (phase {phase})")
        walls.append(wall)
        cpus.append(cpu)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    mb = len(blob) / 1e6
    print(f"model {mb:.1f} MB in 64 KiB chunks, {args.rounds} rounds")
    each = " / ".join(f"{1000 * w:.0f}" for w in walls)
    print(f"wall per install (median)  {1000 * wall:.1f} ms  ({each})")
    print(f"CPU per install (median)   {1000 * cpu:.1f} ms (all threads of this process)")
    print(f"device-side absorb rate    {mb / wall:.0f} MB/s")
    print(f"\ncommand: {' '.join([Path(sys.executable).as_posix(), *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
