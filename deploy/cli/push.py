"""`edge-deploy push`, `rollback` and `command`: sign and install one model on one device,
send it back to its previous one, send it one command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK
from agent.errors import ConfigError, EdgeloopError
from agent.wire.manifest import DEFAULT_SLOT
from deploy.cli.common import (
    broker,
    broker_options,
    existing_file,
    gates,
    host_config,
    keys_dir,
    open_registry,
)


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
    result = push_model(
        model,
        args.device,
        broker(args),
        load_private(keys_dir(args)),
        name=args.name or model.stem,
        version=args.version,
        release=args.release,
        prefix=args.prefix,
        recipe=args.recipe,
        delegate=args.delegate,
        gates=gates(args),
        timeout_s=args.timeout,
        progress=None if args.json else sys.stderr,
        chunk_size=args.chunk_kib * 1024,
        slot=args.slot,
    )
    return _print_result(args, result)


def _print_result(args: argparse.Namespace, result: Any) -> int:
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser("push", help="sign and install a model on one device")
    p.add_argument("model")
    p.add_argument("--device", required=True)
    p.add_argument("--keys", default=None, help="key directory (default: --host-config's)")
    p.add_argument("--name", default=None, help="model name (default: file stem)")
    p.add_argument("--version", default="1")
    p.add_argument("--release", type=int, default=None, help="default: now in milliseconds")
    p.add_argument("--recipe", default="unknown")
    p.add_argument("--delegate", default="auto")
    p.add_argument(
        "--slot",
        default=DEFAULT_SLOT,
        help=f"model slot the manifest fills (default {DEFAULT_SLOT!r}, the agent's default); "
        "the device's counter is per slot, whatever the model's name",
    )
    p.add_argument("--p95-gate", type=float, default=None, help="trial gate on p95 (ms)")
    p.add_argument("--min-inferences", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument(
        "--chunk-kib",
        type=int,
        default=64,
        help="chunk size in KiB (default 64: under AWS IoT's 128 KB message limit)",
    )
    p.add_argument("--json", action="store_true")
    broker_options(p)
    p.set_defaults(func=cmd_push)


def cmd_rollback(args: argparse.Namespace) -> int:
    from deploy.keys import load_private
    from deploy.rollback import roll_back

    model = existing_file(args.model, "model", "give the .tflite of the previous model")
    registry = open_registry(args.registry) if args.registry else None
    result = roll_back(
        broker(args),
        args.device,
        load_private(keys_dir(args)),
        model=model,
        registry=registry,
        prefix=args.prefix,
        gates=gates(args),
        timeout_s=args.timeout,
    )
    return _print_result(args, result)


def add_rollback_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rollback",
        help="send a device back to its previous model (a new signed manifest, higher release)",
    )
    p.add_argument("--device", required=True)
    p.add_argument("--model", default=None, help="the previous model's .tflite")
    p.add_argument("--registry", default=None, help="or a registry holding it as a variant")
    p.add_argument("--keys", default=None, help="key directory (default: --host-config's)")
    p.add_argument("--min-inferences", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true")
    broker_options(p)
    p.set_defaults(func=cmd_rollback)


def cmd_command(args: argparse.Namespace) -> int:
    import json

    from deploy.command import build_command, send_command
    from deploy.keys import load_private

    try:
        cmd_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--args is not JSON: {exc}", hint="for example --args '{\"runs\": 50}'"
        ) from None
    if not isinstance(cmd_args, dict):
        raise ConfigError("--args must be a JSON object")
    has_keys = args.keys is not None or host_config(args) is not None
    key = load_private(keys_dir(args)) if has_keys else None
    cmd = build_command(args.verb, args.device, cmd_args, key)
    reply = send_command(
        broker(args), args.device, cmd, prefix=args.prefix, timeout_s=args.timeout, final=args.wait
    )
    print(reply.to_json().decode())
    return EXIT_OK if reply.status in ("ok", "accepted", "duplicate") else EXIT_FAILED


def add_command_parser(sub: Any) -> None:
    p = sub.add_parser("command", help="send one command to a device (signed where it must be)")
    p.add_argument("verb", choices=["rollback", "config", "bench", "state", "rebirth"])
    p.add_argument("--device", required=True)
    p.add_argument("--args", default="{}", help="the command's args as a JSON object")
    p.add_argument("--keys", default=None, help="key directory (default: --host-config's)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument(
        "--wait",
        action="store_true",
        help="print the final reply (a bench's result), not 'accepted'",
    )
    broker_options(p)
    p.set_defaults(func=cmd_command)
