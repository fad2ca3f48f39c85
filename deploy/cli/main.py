"""`edge-deploy`: the host command line.

    edge-deploy keys init --dir DIR          make the signing key pair (prints the .pub path last)
    edge-deploy keys show --dir DIR
    edge-deploy push MODEL --device ID --broker HOST:PORT --keys DIR [--name N --version V]
                [--chunk-kib 64] [--json]
    edge-deploy convert SOURCE --recipe NAME|all --out FILE|DIR [--calibration DATA]
                [--validation DATA] [--backend auto|tf|aiq] [--json]
    edge-deploy fleet --broker HOST:PORT [--wait S] [--json]
    edge-deploy fleet --registry FILE [--targets FILE] [--live --broker HOST:PORT] [--json]
    edge-deploy watch --broker HOST:PORT [--seconds S] [--device ID]
    edge-deploy collect --broker HOST:PORT --registry FILE     the ingest worker (cli/collect.py)
    edge-deploy simulate --devices N --broker HOST:PORT        simulated devices (cli/simulate.py)
    edge-deploy demo [--workdir DIR]          a whole fleet on this machine
    edge-deploy optimize | rollout | report    the closed loop (deploy/cli_loop.py)

Bad input prints one line on stderr and exits 2; a push that ends rolled back or rejected exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK, run_main
from agent.errors import EdgeloopError
from deploy import __version__


def _broker(args: argparse.Namespace) -> Any:
    from deploy.push import BrokerAddress

    b = BrokerAddress.parse(args.broker)
    return BrokerAddress(b.host, b.port, args.username, args.password)


def cmd_keys(args: argparse.Namespace) -> int:
    from deploy import keys

    if args.keys_command == "init":
        print(str(keys.init_keys(args.dir)))
        return EXIT_OK
    info = keys.show(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"key id:      {info['key_id']}")
        print(f"public key:  {info['public_key_path']}")
        print(f"private key: {info['private_key_path']}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from deploy.keys import load_private
    from deploy.push import push_model

    model = Path(args.model)
    if not model.is_file():
        raise EdgeloopError(f"{model}: no such file", hint="give the path of a .tflite model")
    if not 1 <= args.chunk_kib <= 4096:
        raise EdgeloopError(
            f"--chunk-kib {args.chunk_kib}: must be 1..4096",
            hint="64 (the default) stays under AWS IoT's 128 KB message limit; Mosquitto, "
            "EMQX and HiveMQ take larger messages",
        )
    gates = {}
    if args.p95_gate is not None:
        gates["p95_ms"] = args.p95_gate
    if args.min_inferences is not None:
        gates["min_inferences"] = args.min_inferences
    if args.min_seconds is not None:
        gates["min_seconds"] = args.min_seconds
    result = push_model(
        model,
        args.device,
        _broker(args),
        load_private(args.keys),
        name=args.name or model.stem,
        version=args.version,
        release=args.release,
        prefix=args.prefix,
        recipe=args.recipe,
        delegate=args.delegate,
        gates=gates or None,
        timeout_s=args.timeout,
        progress=None if args.json else sys.stderr,
        chunk_size=args.chunk_kib * 1024,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        sent = f"{result.bytes_sent / 2**20:.2f} MiB in {result.chunks_sent} chunks"
        print(
            f"{args.device}: {result.outcome}"
            + (f" ({result.code})" if result.code and result.code != result.outcome else "")
            + f": {result.message}; {sent}; {result.seconds:.1f}s"
        )
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_fleet(args: argparse.Namespace) -> int:
    from deploy.fleet.view import COLUMNS, REGISTRY_COLUMNS, FleetWatcher, format_table

    rows: list[dict[str, Any]] = []
    if args.registry is None or args.live:
        watcher = FleetWatcher(_broker(args), args.prefix)
        with watcher.running():
            watcher.pump(args.wait)
        rows = watcher.rows()
    columns: Sequence[tuple[str, int]] = COLUMNS
    if args.registry is not None:
        from deploy.cli.loop import open_registry, read_targets
        from deploy.fleet.view import merge_live, registry_rows

        targets = read_targets(args.targets)
        registry = open_registry(args.registry)
        try:
            rows = merge_live(registry_rows(registry, targets), rows)
            if args.json:
                from deploy.fleet.windows import with_window_counts

                rows = with_window_counts(registry, rows)
        finally:
            registry.close()
        columns = REGISTRY_COLUMNS
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, columns))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from agent.wire.topics import ParsedTopic
    from deploy.fleet.view import FleetWatcher

    def show(parsed: ParsedTopic, body: dict[str, Any]) -> None:
        if args.device and parsed.device_id != args.device:
            return
        if parsed.kind == "telemetry":
            lat = body.get("latency_ms") or {}
            line = (
                f"seq {body.get('seq')} n={body.get('inferences')} p50={lat.get('p50')} "
                f"p95={lat.get('p95')} ms rss={body.get('rss_mb')} MB temp={body.get('temp_c')}"
            )
        elif parsed.kind == "events":
            line = f"{body.get('kind')} {body.get('code')} {body.get('message', '')}".strip()
        else:
            line = "online" if body.get("online") else f"offline ({body.get('reason')})"
        print(f"{parsed.device_id:<14} {parsed.kind:<9} {line}", flush=True)

    watcher = FleetWatcher(_broker(args), args.prefix)
    with watcher.running():
        watcher.pump(args.seconds, show)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from deploy.demo import run_demo

    return run_demo(Path(args.workdir))


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--prefix", default="edgeloop", help="topic prefix")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"edgeloop {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keys", help="manifest signing keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    k = ks.add_parser("init", help="create a key pair")
    k.add_argument("--dir", required=True)
    k = ks.add_parser("show", help="show the key id and files")
    k.add_argument("--dir", required=True)
    k.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("push", help="sign and install a model on one device")
    p.add_argument("model")
    p.add_argument("--device", required=True)
    p.add_argument("--keys", required=True, help="key directory (edge-deploy keys init)")
    p.add_argument("--name", default=None, help="model name (default: file stem)")
    p.add_argument("--version", default="1")
    p.add_argument("--release", type=int, default=None, help="default: now in milliseconds")
    p.add_argument("--recipe", default="unknown")
    p.add_argument("--delegate", default="auto")
    p.add_argument("--p95-gate", type=float, default=None, help="trial gate on p95 (ms)")
    p.add_argument("--min-inferences", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument(
        "--chunk-kib", type=int, default=64,
        help="chunk size in KiB (default 64: under AWS IoT's 128 KB message limit)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    _broker_options(p)
    p.set_defaults(func=cmd_push)

    from deploy.convert.cli import add_convert_parser

    add_convert_parser(sub)

    p = sub.add_parser("fleet", help="table of devices")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect state")
    p.add_argument("--registry", default=None, help="add class, target status, optimizer state")
    p.add_argument("--targets", default=None, help="targets TOML for the target status")
    p.add_argument("--live", action="store_true", help="with --registry: also the MQTT view")
    p.add_argument("--json", action="store_true")
    _broker_options(p)
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("watch", help="live events and telemetry")
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--device", default=None)
    _broker_options(p)
    p.set_defaults(func=cmd_watch)
    from deploy.cli.loop import add_loop_parsers

    add_loop_parsers(sub)
    from deploy.cli.simulate import add_simulate_parser

    add_simulate_parser(sub)
    from deploy.cli.collect import add_collect_parser

    add_collect_parser(sub)

    p = sub.add_parser("demo", help="a whole fleet on this machine (embedded broker, 3 agents)")
    p.add_argument("--workdir", default="edgeloop-demo", help="where the demo keeps its state")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)
