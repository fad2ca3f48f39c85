"""`edge-deploy study` on the seed table's models (issue 11, item 5; not collected by pytest).

    python tests/bench_study.py [--models mobilenet_v1,mobilenet_v2,inception_v3,resnet_v2_101]
        [--recipes fp32,dynamic-int8,int8] [--runs 20] [--no-sensitive] [--out DIR]

Starts a Mosquitto and one real agent (the captured Raspberry Pi 4 tree, 1 thread: the seed
table was measured on one big core), then for each Keras architecture (random weights, seed 0;
sizes and latency only) runs the real CLI, ``edge-deploy study SOURCE --recipes ... --device
... --json``, with 8 random calibration images of the model's input shape; every variant is
pushed to the agent through delivery and benched there by the signed ``bench`` command. Then
the sensitive task (deploy/data/fusionnet: labelled, so accuracy columns) with fp32, int8 and
qat. Prints every row and the table beside the seed's published figures (ANCHORS: TFLite's
model-optimization table, Pixel 2 big core) as ratios: size float / quantized, and the speed-up
of dynamic-range and of full int8 over float.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agent_proc import AgentProcess
from tests.broker import Broker

HWTREES = ROOT / "deploy" / "data" / "hwtrees"
FUSION = ROOT / "deploy" / "data" / "fusionnet"
# keras.applications constructor and input side
ARCH = {
    "mobilenet_v1": ("MobileNet", 224),
    "mobilenet_v2": ("MobileNetV2", 224),
    "inception_v3": ("InceptionV3", 299),
    "resnet_v2_101": ("ResNet101V2", 224),
}
# TFLite's model-optimization table (Pixel 2, one big core): ms float, ms PTQ (dynamic range),
# ms QAT (full int8), MB float, MB quantized
SEED = {
    "mobilenet_v1": (124, 112, 64, 16.9, 4.3),
    "mobilenet_v2": (89, 98, 54, 14.0, 3.6),
    "inception_v3": (1130, 845, 543, 95.7, 23.9),
    "resnet_v2_101": (3973, 2868, None, 178.3, 44.9),
}


def make_source(name: str, work: Path) -> tuple[Path, Path]:
    """The Keras model (random weights) and 8 calibration images of its input shape."""
    import numpy as np
    import tensorflow as tf

    ctor, side = ARCH[name]
    tf.keras.utils.set_random_seed(0)
    model = getattr(tf.keras.applications, ctor)(weights=None, input_shape=(side, side, 3))
    src = work / f"{name}.keras"
    model.save(src)
    calib = work / f"{name}_calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, arr_0=rng.uniform(-1, 1, (8, side, side, 3)).astype(np.float32))
    return src, calib


def study(args: list[str], timeout: float) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())",
           "study", *args, "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    print("\n".join(progress), file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"study exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def seed_rows(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["model"], r["recipe"]): r for r in rows}
    out = [
        "| model | MB fp32 | MB int8 | size ratio (seed) | p50 ms fp32 | p50 ms dynamic | "
        "p50 ms int8 | dynamic speed-up (seed) | int8 speed-up (seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (ms_f, ms_d, ms_q, mb_f, mb_q) in SEED.items():
        f, d, q = (by.get((name, r)) or {} for r in ("fp32", "dynamic-int8", "int8"))
        if not f:
            continue
        mb = {k: (v.get("size_bytes") or 0) / 1e6 for k, v in (("f", f), ("q", q))}
        out.append(
            f"| {name} | {mb['f']:.1f} | {mb['q']:.1f} | {ratio(mb['f'], mb['q'])} "
            f"({mb_f / mb_q:.2f}) | {f.get('p50_ms') or 0:.1f} | {d.get('p50_ms') or 0:.1f} | "
            f"{q.get('p50_ms') or 0:.1f} | {ratio(f.get('p50_ms'), d.get('p50_ms'))} "
            f"({ms_f / ms_d:.2f}) | {ratio(f.get('p50_ms'), q.get('p50_ms'))} "
            f"({'-' if ms_q is None else f'{ms_f / ms_q:.2f}'}) |"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ARCH))
    ap.add_argument("--recipes", default="fp32,dynamic-int8,int8")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-sensitive", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the rows as JSON here")
    opts = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from deploy.keys import init_keys

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-study-") as d:
        work = Path(d)
        init_keys(work / "keys")
        cfg = work / "agent.toml"
        cfg.write_text("[runtime]\nthreads = 1\n[limits]\ndisk_mb = 4096\nmax_model_mb = 512\n")
        broker = Broker(work / "broker").start()
        agent = AgentProcess(broker, work / "state", work / "keys" / "edgeloop.pub",
                             device_id="pi4-study", hw_root=str(HWTREES / "rpi4b"),
                             extra_args=["--config", str(cfg)], ready_check=True)  # fmt: skip
        common = ["--device", "pi4-study", "--broker", broker.url, "--keys", str(work / "keys"),
                  "--runs", str(opts.runs), "--out", str(work / "out")]  # fmt: skip
        rows: list[dict[str, Any]] = []
        try:
            agent.start()
            for name in [m for m in opts.models.split(",") if m]:
                src, calib = make_source(name, work)
                print(f"{name}: {src.stat().st_size / 1e6:.1f} MB source", file=sys.stderr)
                rows += study([str(src), "--recipes", opts.recipes, "--calibration", str(calib),
                               *common], timeout=3600)  # fmt: skip
            if not opts.no_sensitive:
                data = str(FUSION / "fusion_data.npz")
                rows += study([str(FUSION / "fusionnet.keras"), "--recipes", "fp32,int8,qat",
                               "--calibration", data, "--validation", data,
                               "--train", str(FUSION / "fusion_train.npz"), *common],
                              timeout=1800)  # fmt: skip
        finally:
            agent.stop()
            broker.stop()
    keys = ("model", "recipe", "status", "size_bytes", "p50_ms", "p95_ms", "accuracy", "agreement",
            "conversion_s", "error")  # fmt: skip
    for r in rows:
        print(json.dumps({k: r.get(k) for k in keys}))
    print("\n".join(seed_rows(rows)))
    print(f"wall {time.monotonic() - start:.0f} s; host, broker and agent on the same 2 cores")
    if opts.out:
        opts.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
