"""`edge-deploy fleet | watch`: the fleet table and the live feed.

``edge-deploy fleet`` prints a summary per class (online, stale, model, variant, p95, targets
met, worst device), then the devices worst first (``--limit``, default 50); ``rich`` tables on
a terminal, plain text otherwise; ``--json`` lists every device (``--by-class``: the summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from agent.cliutil import EXIT_OK
from agent.errors import ConfigError
from deploy.cli.common import broker, broker_options, open_registry, read_targets


def cmd_fleet(args: argparse.Namespace) -> int:
    from deploy.fleet.summary import class_summary, mark_stale
    from deploy.fleet.view import COLUMNS, REGISTRY_COLUMNS, FleetWatcher

    if args.stale <= 0 or args.limit < 0:
        raise ConfigError("--stale must be > 0 seconds and --limit >= 0 (0: every device)")
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
    rows = mark_stale(rows, args.stale)
    if args.json:
        print(json.dumps(class_summary(rows) if args.by_class else rows, indent=2))
    else:
        show_fleet(rows, columns, args.limit, sys.stdout)
    return EXIT_OK


def show_fleet(
    rows: list[dict[str, Any]], columns: Sequence[tuple[str, int]], limit: int, out: TextIO
) -> None:
    """The class summary, then the devices worst first (``limit`` of them, 0: all): ``rich``
    tables on a terminal, plain text otherwise."""
    from deploy.fleet.summary import SUMMARY_COLUMNS, class_summary, summary_cells, worst_first

    summary = [summary_cells(c) for c in class_summary(rows)]
    devices = worst_first(rows)
    shown = devices[:limit] if limit else devices
    title = f"devices, worst first ({len(shown)} of {len(devices)})"
    if out.isatty():
        from rich.console import Console

        console = Console(file=out)
        console.print(rich_table(summary, SUMMARY_COLUMNS, "classes"))
        console.print(rich_table(shown, [*columns, ("stale", 5)], title))
        return
    from deploy.fleet.view import format_table

    out.write(format_table(summary, SUMMARY_COLUMNS) + "\n\n")
    out.write(title + "\n" + format_table(shown, [*columns, ("stale", 5)]) + "\n")


def rich_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, int]], title: str) -> Any:
    from rich.table import Table

    from deploy.fleet.view import cell

    table = Table(title=title, title_justify="left")
    for name, _width in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        bad = row.get("online") is False or str(row.get("targets", "")).startswith("misses")
        table.add_row(*(cell(row.get(n)) for n, _w in columns), style="red" if bad else None)
    return table


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
    p.add_argument("--json", action="store_true", help="every device (or --by-class) as JSON")
    p.add_argument("--by-class", action="store_true", help="with --json: the class summary")
    p.add_argument("--stale", type=float, default=300.0, help="online but silent this long (s)")
    p.add_argument("--limit", type=int, default=50, help="devices shown, worst first (0: all)")
    broker_options(p)
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("watch", help="live events and telemetry")
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--device", default=None)
    broker_options(p)
    p.set_defaults(func=cmd_watch)
