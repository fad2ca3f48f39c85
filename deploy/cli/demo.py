"""`edge-deploy demo`: a whole fleet on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    from deploy.demo import DemoOptions, run_demo

    return run_demo(Path(args.workdir), opts=DemoOptions(secure=args.secure))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="a whole fleet on this machine (embedded broker, 3 agents)")
    p.add_argument("--workdir", default="edgeloop-demo", help="where the demo keeps its state")
    p.add_argument(
        "--secure",
        action="store_true",
        help="under a generated PKI and broker config: TLS, client certificates, per-device ACL",
    )
    p.set_defaults(func=cmd_demo)
