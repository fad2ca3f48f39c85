"""`edge-deploy collect`: the ingest worker on its own.

    edge-deploy collect --broker HOST:PORT --registry FILE_OR_URL [--seconds S] [--stats S]

The registry is a SQLite file or a ``postgresql://`` URL. Several of them on one registry
(on one machine or several, with PostgreSQL) split the devices through the shared subscription
``$share/edgeloop-collect/...`` (no flags needed); each takes a stable client id
(deploy/fleet/worker_slot.py) so a restarted worker gets back what the broker kept for it.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from agent.cliutil import EXIT_OK


def cmd_collect(args: argparse.Namespace) -> int:
    from deploy.cli.common import broker, open_registry
    from deploy.fleet.ingest import Ingest
    from deploy.fleet.worker_slot import claim_slot

    registry = open_registry(args.registry, create=True)
    client_id, _lock = claim_slot(args.registry)
    if args.client_id:
        client_id = args.client_id
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ingest = Ingest(registry, broker(args), client_id=client_id, prefix=args.prefix).start()
    print(json.dumps({"started": True, "client_id": client_id}), flush=True)
    try:
        waited = 0.0
        while not stop.wait(args.stats):
            waited += args.stats
            print(json.dumps(ingest.stats.to_dict()), flush=True)
            if args.seconds and waited >= args.seconds:
                break
    except KeyboardInterrupt:
        pass
    finally:
        ingest.stop()
        registry.close()
    print(json.dumps(ingest.stats.to_dict() | {"final": True}), flush=True)
    return EXIT_OK


def add_collect_parser(sub: Any) -> None:
    from deploy.cli.common import REGISTRY_HELP, broker_options

    p = sub.add_parser("collect", help="store every device's state and telemetry (ingest)")
    p.add_argument(
        "--registry", required=True, help=REGISTRY_HELP + " (a file is created if missing)"
    )
    p.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds (0: never)")
    p.add_argument("--stats", type=float, default=5.0, help="seconds between counter lines")
    p.add_argument("--client-id", default=None, help="default: a stable per-host slot")
    broker_options(p)
    p.set_defaults(func=cmd_collect)


def cmd_retention(args: argparse.Namespace) -> int:
    from deploy.cli.common import open_registry
    from deploy.fleet.retention import RetentionPolicy, apply_retention

    if args.keep_days < 0 or (args.keep_windows is not None and args.keep_windows < 0):
        from agent.errors import ConfigError

        raise ConfigError(
            "--keep-days and --keep-windows cannot be negative",
            hint="e.g. --keep-days 7 (raw windows for a week, hourly roll-ups beyond)",
        )
    policy = RetentionPolicy(keep_s=args.keep_days * 86400.0, keep_windows=args.keep_windows)
    registry = open_registry(args.registry)
    try:
        result = apply_retention(registry, policy)
    finally:
        registry.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"rolled up {result.rolled_up} windows into {result.hours} hourly rows "
            f"(before {result.cutoff:.0f}); {result.kept} raw windows kept"
        )
    return EXIT_OK


def add_retention_parser(sub: Any) -> None:
    from deploy.cli.common import REGISTRY_HELP

    p = sub.add_parser(
        "retention", help="roll up and delete old telemetry windows (deploy/fleet/retention.py)"
    )
    p.add_argument("--registry", required=True, help=REGISTRY_HELP)
    p.add_argument("--keep-days", type=float, default=7.0, help="raw windows kept (default 7)")
    p.add_argument("--keep-windows", type=int, default=None, help="at most N raw windows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retention)
