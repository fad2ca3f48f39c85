"""Energy-per-inference error of the meters against a known power profile (not collected by pytest).

    /work/venv/bin/python tests/bench_energy.py [--bursts 5] [--burst-s 10] [--gap-s 3] [--json OUT]

A simulated UM25C (polled at its real ~2 Hz, readings refreshed twice a second like the meter's
display) and a simulated INA219 line bridge (10 lines/s) sit on pseudo-terminals and follow a
power profile the benchmark switches between idle (2.5 W) and load (5.0 W) in step with a real
inference loop (digits_int8 through the active TFLite runtime; a synthetic CPU loop with
``--synthetic`` or when no runtime is installed). The truth is the profile's exact integral over
the window. For each meter it prints the gross and net energy-per-inference error (goal: within
2 %), and the same for a 1 s window to show why a 1-2 Hz meter only gives averages over many
inferences.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.energy import EnergySampler, open_meter
from tests.sim_meters import PowerProfile, SimLineMeter, SimUM25C, _PtyDevice, burst_workload

IDLE_W, LOAD_W = 2.5, 5.0


def real_inference() -> tuple[Callable[[], None], str]:
    """A digits_int8 invoke() through the active runtime, or a synthetic loop when unavailable."""
    try:
        import numpy as np

        from agent.runtime import get_backend
        from agent.runtime.inputs import random_inputs
        from tests.modelzoo import model

        backend = get_backend()
        interp = backend.interpreter(model_path=str(model("digits_int8")), num_threads=1)
        interp.allocate_tensors()
        details = interp.get_input_details()
        inputs = random_inputs(details, np.random.default_rng(0))
    except Exception as exc:  # no runtime here: still a meaningful benchmark of the arithmetic
        print(f"(real model unavailable: {exc}; using a synthetic CPU loop)")
        return synthetic_inference(), "synthetic"

    def invoke() -> None:
        for d, x in zip(details, inputs, strict=True):
            interp.set_tensor(d["index"], x)
        interp.invoke()

    return invoke, f"digits_int8 on {backend.name} {backend.version}"


def synthetic_inference() -> Callable[[], None]:
    def invoke() -> None:
        sum(i * i for i in range(3000))

    return invoke


def run_workload(
    profile: PowerProfile, infer: Callable[[], None], bursts: int, burst_s: float, gap_s: float
) -> tuple[float, float, int]:
    return burst_workload(
        profile, infer, idle_w=IDLE_W, load_w=LOAD_W, bursts=bursts, burst_s=burst_s, gap_s=gap_s
    )


def errors(
    sampler: EnergySampler, profile: PowerProfile, t0: float, t1: float, n: int
) -> dict[str, Any]:
    sampler.wait_sample_after(t1 + 0.1, timeout=10)
    window = sampler.window(t0, t1, n)
    joules = profile.integral(t0, t1)
    gross = joules / n * 1000
    net = (joules - IDLE_W * (t1 - t0)) / n * 1000
    out: dict[str, Any] = {
        "window_s": round(t1 - t0, 2),
        "inferences": n,
        "samples": window.samples,
        "truth_mj": round(gross, 4),
        "truth_net_mj": round(net, 4),
        "mj_per_inference": window.mj_per_inference,
        "mj_per_inference_net": window.mj_per_inference_net,
        "missing_reason": window.missing_reason,
    }
    if window.mj_per_inference is not None and window.mj_per_inference_net is not None:
        out["gross_error_pct"] = round(100 * (window.mj_per_inference / gross - 1), 3)
        out["net_error_pct"] = round(100 * (window.mj_per_inference_net / net - 1), 3)
    return out


def bench_meter(
    name: str, spec: str, profile: PowerProfile, infer: Callable[[], None], args: argparse.Namespace
) -> dict[str, Any]:
    sampler = EnergySampler(open_meter(spec), baseline_s=3.0).start()
    try:
        idle = sampler.wait_baseline(timeout=20)
        long_run = errors(
            sampler, profile, *run_workload(profile, infer, args.bursts, args.burst_s, args.gap_s)
        )
        time.sleep(2.0)
        short_run = errors(sampler, profile, *run_workload(profile, infer, 1, 1.0, 0.0))
    finally:
        sampler.stop()
    return {
        "meter": name,
        "spec": spec.split(":", maxsplit=1)[0],
        "idle_w": idle,
        "long": long_run,
        "short_1s": short_run,
    }


#: The meters benchmarked, each on a fresh profile: (name, its simulator in a directory, the
#: meter spec for the simulator's path).
SIMULATED: tuple[tuple[str, Callable[[Path, PowerProfile], _PtyDevice], str], ...] = (
    (
        "UM25C (2 Hz poll, 2 Hz refresh)",
        lambda tmp, profile: SimUM25C(tmp / "rfcomm0", profile, refresh_hz=2.0),
        "um25c:{}?interval=0.5",
    ),
    (
        "INA219 CSV lines (10 Hz)",
        lambda tmp, profile: SimLineMeter(tmp / "ttyACM0", profile, rate_hz=10),
        "serial_lines:{}?fields=ms,mV,mA",
    ),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--burst-s", type=float, default=10.0)
    parser.add_argument("--gap-s", type=float, default=3.0)
    parser.add_argument("--synthetic", action="store_true", help="skip the real model")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    infer, workload = (synthetic_inference(), "synthetic") if args.synthetic else real_inference()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, simulator, spec in SIMULATED:
            profile = PowerProfile(IDLE_W)
            with simulator(Path(tmp), profile) as sim:
                results.append(bench_meter(name, spec.format(sim.path), profile, infer, args))

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} Python "
        f"{platform.python_version()}; workload: {workload}"
    )
    print(
        f"profile: idle {IDLE_W} W, load {LOAD_W} W; {args.bursts} bursts x {args.burst_s} s "
        f"with {args.gap_s} s idle gaps"
    )
    header = f"{'meter':46} {'window':>8} {'n':>7} {'samples':>7} {'gross err':>10} {'net err':>9}"
    print(header)
    for r in results:
        for label, run in (("", r["long"]), (" [1 s window]", r["short_1s"])):
            g = run.get("gross_error_pct")
            n = run.get("net_error_pct")
            g_text = f"{g:+.2f} %" if g is not None else "missing"
            n_text = f"{n:+.2f} %" if n is not None else "missing"
            print(
                f"{r['meter'] + label:46} {run['window_s']:>7}s {run['inferences']:>7} "
                f"{run['samples']:>7} {g_text:>10} {n_text:>9}"
            )
    if args.json:
        args.json.write_text(json.dumps({"workload": workload, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
