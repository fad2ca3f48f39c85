"""`edge-deploy simulate`: a fleet of simulated devices speaking the real protocol.

    edge-deploy simulate --devices 5000 --classes rpi4b-cpu/ai-edge-litert=3,rpi5-cpu/ai-edge-litert
                [--window 1] [--processes 3] [--trust KEY.pub] [--install-fail 0.05]
                [--trial-fail 0] [--offline 0] [--seconds S] --broker HOST:PORT

Prints one JSON line of summed counters every few seconds (and a last one on exit).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK
from agent.errors import EdgeloopError


def cmd_simulate(args: argparse.Namespace) -> int:
    from deploy.mqtt import BrokerAddress
    from deploy.sim.fleet import FleetSpec
    from deploy.sim.launch import Launcher
    from deploy.sim.profile import parse_classes

    if not 1 <= args.devices <= 100_000:
        raise EdgeloopError(f"--devices {args.devices}: must be 1..100000")
    if not 0.5 <= args.window <= 3600:
        raise EdgeloopError(f"--window {args.window}: must be within [0.5, 3600] seconds")
    rates = {
        "install_fail": args.install_fail,
        "trial_fail": args.trial_fail,
        "offline": args.offline,
    }
    if any(not 0 <= r <= 1 for r in rates.values()) or sum(rates.values()) > 1:
        raise EdgeloopError("--install-fail, --trial-fail and --offline: fractions summing to <= 1")
    try:
        classes = parse_classes(args.classes)
    except ValueError as exc:
        raise EdgeloopError(str(exc), hint="e.g. --classes rpi4b-cpu/ai-edge-litert=3") from exc
    broker = BrokerAddress.parse(args.broker)
    spec = FleetSpec(
        broker.host,
        broker.port,
        0,
        args.devices,
        args.devices,
        classes=tuple(f"{c}={w}" for c, w in classes),
        window_s=args.window,
        prefix=args.prefix,
        id_prefix=args.id_prefix,
        trust=tuple(args.trust),
        rates=rates,
    )
    processes = args.processes or max(1, min(4, args.devices // 1500 + 1))
    end = time.monotonic() + args.seconds if args.seconds else float("inf")
    sim = Launcher(spec, processes).start()
    counters: dict[str, Any] = {}
    try:
        while time.monotonic() < end:
            time.sleep(min(args.stats, max(0.0, end - time.monotonic())))
            counters = sim.counters()
            print(json.dumps(counters), flush=True)
            if any(p.poll() is not None for p in sim.procs):
                break
    except KeyboardInterrupt:
        pass
    finally:
        counters = sim.stop()
    print(json.dumps(counters | {"final": True}), flush=True)
    return EXIT_OK if all(p.returncode in (0, -15) for p in sim.procs) else EXIT_FAILED


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulated devices speaking the real protocol")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument(
        "--classes", default="rpi4b-cpu/ai-edge-litert", help="HARDWARE_CLASS/RUNTIME[=WEIGHT],..."
    )
    p.add_argument("--window", type=float, default=10.0, help="telemetry window (seconds)")
    p.add_argument("--processes", type=int, default=0, help="worker processes (default: auto)")
    p.add_argument("--trust", action="append", default=[], help="public key the devices trust")
    p.add_argument("--install-fail", type=float, default=0.0, help="fraction of installs")
    p.add_argument("--trial-fail", type=float, default=0.0, help="fraction of trials")
    p.add_argument("--offline", type=float, default=0.0, help="fraction going offline mid-pull")
    p.add_argument("--id-prefix", default="sim-", help="device ids are PREFIX00000, ...")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds (0: never)")
    p.add_argument("--stats", type=float, default=5.0, help="seconds between counter lines")
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    p.add_argument("--prefix", default="edgeloop", help="topic prefix")
    p.set_defaults(func=cmd_simulate)
