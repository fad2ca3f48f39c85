"""Runtime benchmark for issue 2 (not collected by pytest): harness overhead and fp32 -> int8.

    /work/venv/bin/python tests/bench_runtime.py [--threads 1] [--rounds 5] [--json OUT]

(a) ``edge-agent bench`` p50 against a bare ``invoke()`` loop on the same model (MobileNet v2
    fp32) and thread count. Measured in-process through ``agent.serving.bench.benchmark()`` and,
    when
    the console script exists, through ``edge-agent bench --json`` in a subprocess. The three
    measurements alternate round by round (the order rotates) so machine drift hits them
    alike; the ratio reported is the median of the per-round ratios (goal <= 1.02).
    The bare loop follows the same protocol (1 warm-up run and 0.5 s, then >= 50 runs and
    >= 1 s) with the runtime's Interpreter used directly and no edgeloop code in the loop.
(b) MobileNet v2 fp32 vs full int8: p50 latency (median over rounds) and file size ratios.

Prints a table, the command and the machine; docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.runtime import get_backend
from agent.runtime.inputs import random_inputs
from agent.serving.bench import benchmark
from agent.serving.stats import percentile
from tests.modelzoo import mobilenet_v2

RUNS, MIN_S, WARMUP_RUNS, WARMUP_S = 50, 1.0, 1, 0.5


def bare_p50(model: Path, threads: int) -> float:
    """p50 (ms) of a plain invoke() loop: the runtime's Interpreter, nothing of edgeloop inside."""
    module = get_backend().module  # e.g. ai_edge_litert.interpreter: its Interpreter, as is
    interp = module.Interpreter(model_path=str(model), num_threads=threads)
    interp.allocate_tensors()
    details = interp.get_input_details()
    for d, value in zip(details, random_inputs(details, np.random.default_rng(0)), strict=True):
        interp.set_tensor(d["index"], value)
    interp.invoke()  # first inference
    start = time.perf_counter()
    n = 0
    while n < WARMUP_RUNS or time.perf_counter() - start < WARMUP_S:
        interp.invoke()
        n += 1
    samples: list[int] = []
    start_ns = time.perf_counter_ns()
    while len(samples) < RUNS or time.perf_counter_ns() - start_ns < MIN_S * 1e9:
        t0 = time.perf_counter_ns()
        interp.invoke()
        samples.append(time.perf_counter_ns() - t0)
    return percentile(sorted(s / 1e6 for s in samples), 50)


def inproc_p50(model: Path, threads: int) -> float:
    res = benchmark(model, "cpu", threads=threads, runs=RUNS, min_seconds=MIN_S)
    return float(res.latency.p50)


def cli_command(model: Path, threads: int) -> list[str] | None:
    exe = shutil.which("edge-agent") or str(Path(sys.executable).with_name("edge-agent"))
    if not Path(exe).is_file():
        return None
    cmd = [exe, "bench", str(model), "--json", "--delegate", "cpu", "--threads", str(threads)]
    return [*cmd, "--runs", str(RUNS)]


def cli_p50(cmd: list[str]) -> float | None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        print(f"  edge-agent bench failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        return None
    return float(json.loads(proc.stdout)["latency_ms"]["p50"])


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows (bench headers)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def machine() -> dict[str, Any]:
    cpu = cpu_name()
    backend = get_backend()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "runtime": f"{backend.name} {backend.version}",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def harness_overhead(model: Path, threads: int, rounds: int) -> dict[str, Any]:
    cmd = cli_command(model, threads)
    kinds = ["bare", "inproc"] + (["cli"] if cmd else [])
    got: dict[str, list[float | None]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            if kind == "bare":
                got[kind].append(bare_p50(model, threads))
            elif kind == "inproc":
                got[kind].append(inproc_p50(model, threads))
            elif cmd is not None:
                got[kind].append(cli_p50(cmd))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {got[k][-1]}" for k in kinds))
    out: dict[str, Any] = {"rounds": got, "cli_command": " ".join(cmd) if cmd else None}
    for kind in kinds:
        vals = [v for v in got[kind] if v is not None]
        out[f"{kind}_p50_ms"] = statistics.median(vals) if vals else None
        if kind != "bare":
            ratios = [v / b for v, b in zip(got[kind], got["bare"], strict=True) if v and b]
            out[f"{kind}_ratio"] = statistics.median(ratios) if ratios else None
    return out


def fresh_process_memory(model: Path, threads: int) -> dict[str, Any]:
    """RSS figures from `edge-agent bench --json` in a new process (no earlier model in it)."""
    cmd = cli_command(model, threads)
    if cmd is None:
        return {}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        return {}
    mem = json.loads(proc.stdout)["memory_mb"]
    return {
        "fresh_rss_before_mb": mem["rss_before"],
        "fresh_rss_after_load_mb": mem["rss_after_load"],
        "fresh_peak_mb": mem["peak"],
    }


def fp32_vs_int8(threads: int, rounds: int) -> dict[str, Any]:
    paths = {kind: mobilenet_v2(kind) for kind in ("fp32", "int8")}
    p50: dict[str, list[float]] = {"fp32": [], "int8": []}
    extra: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for kind, path in paths.items():
            res = benchmark(path, "cpu", threads=threads, runs=RUNS, min_seconds=MIN_S)
            p50[kind].append(res.latency.p50)
            extra[kind] = {"model_mem_mb": res.memory.model, "peak_mb": res.memory.peak}
    out: dict[str, Any] = {"p50_rounds": p50}
    for kind, path in paths.items():
        out[kind] = {
            "p50_ms": statistics.median(p50[kind]),
            "size_mb": path.stat().st_size / 1e6,
            **extra[kind],
            **fresh_process_memory(path, threads),
        }
    out["latency_ratio_fp32_over_int8"] = out["fp32"]["p50_ms"] / out["int8"]["p50_ms"]
    out["size_ratio_fp32_over_int8"] = out["fp32"]["size_mb"] / out["int8"]["size_mb"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    command = " ".join([sys.executable, *sys.argv])
    info = machine()
    print(f"command: {command}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))

    model = mobilenet_v2("fp32")
    print(
        f"(a) harness overhead, MobileNet v2 fp32, {args.threads} thread(s), {args.rounds} rounds"
    )
    a = harness_overhead(model, args.threads, args.rounds)
    print(f"(b) MobileNet v2 fp32 vs int8, {args.threads} thread(s), {args.rounds} rounds")
    b = fp32_vs_int8(args.threads, args.rounds)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "n/a" if v is None else format(v, spec)

    print()
    print("| measurement | p50 ms | ratio to bare loop |")
    print("|---|---|---|")
    print(f"| bare invoke() loop | {fmt(a['bare_p50_ms'])} | 1 |")
    print(
        f"| agent.serving.bench.benchmark() | {fmt(a['inproc_p50_ms'])}"
        f" | {fmt(a['inproc_ratio'])} |"
    )
    if a.get("cli_command"):
        print(
            f"| edge-agent bench --json | {fmt(a.get('cli_p50_ms'))} | {fmt(a.get('cli_ratio'))} |"
        )
    print()
    print("| MobileNet v2 | p50 ms | size MB | RSS before / after load / peak MB (fresh process) |")
    print("|---|---|---|---|")
    for kind in ("fp32", "int8"):
        k = b[kind]
        mem = " / ".join(
            fmt(k.get(f"fresh_{n}_mb"), ".1f") for n in ("rss_before", "rss_after_load", "peak")
        )
        print(f"| {kind} | {k['p50_ms']:.2f} | {k['size_mb']:.2f} | {mem} |")
    print(
        f"| fp32 / int8 | {b['latency_ratio_fp32_over_int8']:.2f}x | "
        f"{b['size_ratio_fp32_over_int8']:.2f}x | |"
    )
    print(f"\nload average start {info['loadavg_start']}, end {info['loadavg_end']}")
    if args.json:
        args.json.write_text(
            json.dumps({"command": command, "machine": info, "a": a, "b": b}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
