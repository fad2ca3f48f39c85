"""`edge-agent`: the device command line.

    edge-agent probe [--json] [--hw-root DIR]        what hardware and runtimes are here
    edge-agent inspect MODEL [--json]                 read a .tflite without loading it
    edge-agent check MODEL [--delegate D] [--json]    sandboxed first load + smoke inference
    edge-agent bench MODEL [--json] [--delegate D] [--threads N] [--runs N] [--meter KIND:ARG]
    edge-agent run --config FILE | --device-id ID --broker HOST:PORT --state-dir DIR --trust-key F
    edge-agent config-example                         a commented config with every option

Bad input (a missing file, not a model, an incompatible model, a bad config) prints one line
(plus a hint) on stderr and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cliutil import EXIT_FAILED, EXIT_OK, run_main
from agent.errors import EdgeloopError

log = logging.getLogger(__name__)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise EdgeloopError(
            f"{text}: no such file", hint="give the path of a .tflite model", code="model_file"
        )
    return path


def probe_report(hw_root: str) -> dict[str, Any]:
    """Hardware facts plus the installed runtimes and whether libedgetpu can be found."""
    from agent.board import hardware
    from agent.runtime import installed_runtimes
    from agent.runtime.delegates import find_edgetpu_library
    from agent.wire import ed25519

    report = hardware.detect(hw_root).to_dict()
    report["runtimes"] = [
        {"name": r.name, "version": r.version, "available": r.available}
        | ({"error": r.error} if r.error else {})
        for r in installed_runtimes()
    ]
    report["libedgetpu"] = find_edgetpu_library(hw_root)
    try:
        report["signature_verifier"] = ed25519.backend_name()
    except RuntimeError as exc:
        report["signature_verifier"] = None
        report["signature_verifier_error"] = str(exc)
    return report


def cmd_probe(args: argparse.Namespace) -> int:
    report = probe_report(args.hw_root)
    if args.json:
        _print_json(report)
        return EXIT_OK
    cpu = report.get("cpu", {})
    print(f"board:        {report.get('board')}")
    print(f"class:        {report.get('hardware_class')}")
    print(
        f"cpu:          {cpu.get('arch')} x{cpu.get('cores')} "
        f"(big cores {cpu.get('big_cores')}, governor {cpu.get('governor')}, "
        f"max {cpu.get('max_freq_mhz')} MHz)"
    )
    print(f"memory:       {report.get('memory_mb')} MB")
    accels = report.get("accelerators") or []
    print(
        "accelerators: "
        + (", ".join(f"{a['kind']} {a['device']}" for a in accels) if accels else "none")
    )
    runtimes = [
        f"{r['name']} {r['version']}" if r["available"] else f"{r['name']} (missing)"
        for r in report["runtimes"]
    ]
    print(f"runtimes:     {', '.join(runtimes)}")
    print(f"libedgetpu:   {report['libedgetpu'] or 'not found'}")
    verifier = report["signature_verifier"] or report.get("signature_verifier_error")
    print(f"signatures:   Ed25519 via {verifier}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from agent.runtime import compat, installed_runtimes, modelfile

    info = modelfile.inspect(_existing_file(args.model))
    out = info.to_dict()
    out["compatibility"] = [
        compat.check(info, r.name, r.version or "").to_dict()
        for r in installed_runtimes()
        if r.available
    ]
    if args.json:
        _print_json(out)
        return EXIT_OK
    print(f"model:        {args.model} ({info.size} bytes, sha256 {info.sha256[:16]}...)")
    print(f"quantization: {info.quantization}{'  (Edge TPU-compiled)' if info.is_edgetpu else ''}")
    for t in info.inputs:
        print(f"input:        {t.name} {t.dtype}{list(t.shape)}")
    for t in info.outputs:
        print(f"output:       {t.name} {t.dtype}{list(t.shape)}")
    ops = ", ".join(f"{o.name} v{o.version}" for o in info.operators)
    print(f"operators:    {ops}")
    for c in out["compatibility"]:
        verdict = "ok" if c["ok"] else "NO: " + "; ".join(c["problems"])
        print(f"{c['runtime']} {c['version']}: {verdict}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from agent.runtime.sandbox import probe_model

    result = probe_model(
        _existing_file(args.model), args.delegate, threads=args.threads, timeout_s=args.timeout
    )
    if args.json:
        _print_json(result.to_dict())
    else:
        print(f"{result.code}: {result.message}")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.runtime.sandbox import probe_model
    from agent.serving.bench import benchmark

    model = _existing_file(args.model)
    # The first load of a model runs in a sandbox: a malformed file cannot take us down.
    probe = probe_model(model, args.delegate, threads=args.threads)
    if not probe.ok:
        raise EdgeloopError(
            f"{args.model}: {probe.message}",
            hint="run `edge-agent check MODEL --json` for details",
            code=probe.code,
        )
    meter = None
    if args.meter:
        from agent.energy import open_meter

        meter = open_meter(args.meter)
    result = benchmark(
        model,
        args.delegate,
        threads=args.threads,
        runs=args.runs,
        min_seconds=args.min_seconds,
        hw_root=args.hw_root,
        meter=meter,
    ).to_dict()
    if args.json:
        _print_json(result)
        return EXIT_OK
    lat = result["latency_ms"]
    print(
        f"{args.model}: {result['runs']} runs on {result['runtime']['name']} "
        f"{result['runtime']['version']}, delegate {result['delegate']['delegate']}, "
        f"{result['threads']} threads"
    )
    print(f"init {result['init_ms']:.2f} ms, first {result['first_ms']:.2f} ms")
    print(
        "latency ms: "
        + " ".join(f"{k} {lat[k]:.3f}" for k in ("min", "p50", "p90", "p95", "p99", "max"))
    )
    mem = result["memory_mb"]
    print(
        f"memory MB: before {mem['rss_before']:.1f}, after load {mem['rss_after_load']:.1f}, "
        f"peak {mem['peak']:.1f}"
    )
    energy = result.get("energy")
    if energy:
        print(
            f"energy: {energy.get('mj_per_inference')} mJ/inference gross, "
            f"{energy.get('mj_per_inference_net') or energy.get('net_missing_reason')} net "
            f"({energy.get('source')}, "
            f"{'measured' if energy.get('measured') else 'estimated'})"
        )
    return EXIT_OK


def cmd_config_example(args: argparse.Namespace) -> int:
    from agent.config import example_toml

    sys.stdout.write(example_toml())
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.service import Agent

    overrides: dict[str, Any] = {
        "device_id": args.device_id,
        "state_dir": args.state_dir,
        "hw_root": args.hw_root,
        "trust_keys": args.trust_key or None,
        "runtime.delegate": args.delegate,
        "telemetry.interval_s": args.telemetry_interval,
        "loadgen.rate_hz": args.loadgen_rate,
        "energy.meter": args.meter,
    }
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            raise EdgeloopError(f"--broker {args.broker!r}: expected HOST:PORT", code="config")
        overrides["broker.host"] = host
        overrides["broker.port"] = int(port)
    agent = Agent(load_config(args.config, overrides=overrides))

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("agent.service").info("signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"edgeloop {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("probe", help="detect board, CPU, accelerators and runtimes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--hw-root", default="/", help="read hardware facts under DIR (default /)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("inspect", help="read a .tflite model without loading it")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    def model_load_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("model")
        p.add_argument("--json", action="store_true")
        p.add_argument(
            "--delegate",
            default="auto",
            help="auto | cpu | edgetpu[:usb[:N]|:pci[:N]] | external:LIB",
        )
        p.add_argument("--threads", type=int, default=None, help="default: number of big cores")

    p = sub.add_parser("check", help="sandboxed first load and smoke inference")
    model_load_options(p)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="measure a model with the benchmark_model protocol")
    model_load_options(p)
    p.add_argument("--runs", type=int, default=50, help="at least this many timed runs")
    p.add_argument("--min-seconds", type=float, default=1.0, help="and at least this long")
    p.add_argument("--hw-root", default="/")
    p.add_argument("--meter", default=None, help="energy meter KIND:ARG, e.g. um25c:/dev/rfcomm0")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="run the device daemon")
    p.add_argument("--config", default=None, help="TOML config file")
    p.add_argument("--device-id", default=None)
    p.add_argument("--broker", default=None, help="HOST:PORT")
    p.add_argument("--state-dir", default=None)
    p.add_argument("--trust-key", action="append", default=None, help="host public key file")
    p.add_argument("--hw-root", default=None)
    p.add_argument("--delegate", default=None)
    p.add_argument("--telemetry-interval", type=float, default=None)
    p.add_argument("--loadgen-rate", type=float, default=None)
    p.add_argument("--meter", default=None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config-example", help="print a config file with every option")
    p.set_defaults(func=cmd_config_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)
