"""`edge-deploy fleet | watch`: the fleet table and the live feed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from agent.cliutil import EXIT_OK
from deploy.cli.common import broker, broker_options, open_registry, read_targets


def cmd_fleet(args: argparse.Namespace) -> int:
    from deploy.fleet.view import COLUMNS, REGISTRY_COLUMNS, FleetWatcher, format_table

    rows: list[dict[str, Any]] = []
    if args.registry is None or args.live:
        watcher = FleetWatcher(broker(args), args.prefix)
        with watcher.running():
            watcher.pump(args.wait)
        rows = watcher.rows()
    columns: Sequence[tuple[str, int]] = COLUMNS
    if args.registry is not None:
        from deploy.fleet.view import merge_live
        from deploy.loop.status import registry_rows

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

    watcher = FleetWatcher(broker(args), args.prefix)
    with watcher.running():
        watcher.pump(args.seconds, show)
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fleet", help="table of devices")
    p.add_argument("--wait", type=float, default=1.5, help="seconds to collect state")
    p.add_argument("--registry", default=None, help="add class, target status, optimizer state")
    p.add_argument("--targets", default=None, help="targets TOML for the target status")
    p.add_argument("--live", action="store_true", help="with --registry: also the MQTT view")
    p.add_argument("--json", action="store_true")
    broker_options(p)
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("watch", help="live events and telemetry")
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--device", default=None)
    broker_options(p)
    p.set_defaults(func=cmd_watch)
