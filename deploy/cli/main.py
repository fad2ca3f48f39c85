"""`edge-deploy`: the host command line.

    edge-deploy keys init --dir DIR          make the signing key pair (prints the .pub path last)
    edge-deploy keys show --dir DIR
    edge-deploy push MODEL --device ID --broker HOST:PORT --keys DIR [--name N --version V]
                [--chunk-kib 64] [--json]
    edge-deploy command VERB --device ID [--args JSON] [--keys DIR]   signed where it must be
    edge-deploy rollback --device ID (--model FILE | --registry DB)    the previous model again,
                as a new signed manifest above the device's release counter
    edge-deploy convert SOURCE --recipe NAME|all --out FILE|DIR [--calibration DATA]
                [--validation DATA] [--backend auto|tf|aiq] [--json]
    edge-deploy fleet --broker HOST:PORT [--wait S] [--json]
    edge-deploy fleet --registry FILE [--targets FILE] [--live --broker HOST:PORT] [--json]
    edge-deploy watch --broker HOST:PORT [--seconds S] [--device ID]
    edge-deploy collect --broker HOST:PORT --registry REG   the ingest worker (cli/collect.py)
    edge-deploy retention --registry REG [--keep-days 7]   hourly roll-ups of old windows
                (REG: a registry file or a postgresql:// URL)
    edge-deploy simulate --devices N --broker HOST:PORT        simulated devices (cli/simulate.py)
    edge-deploy demo [--workdir DIR] [--secure]  a whole fleet on this machine (--secure: TLS, ACL)
    edge-deploy pki | provision | broker-config   a locked-down fleet (deploy/cli/secure.py)
    edge-deploy optimize | report    the closed loop (deploy/cli/loop.py)
    edge-deploy rollout MODEL --variant V --class C   staged rollout, live progress (cli/rollout.py)
    edge-deploy study SOURCE... --recipes LIST --device ID   the seed table (deploy/cli/study.py)

One module per command group (keys, push, convert in deploy/convert/cli.py, fleet, loop,
rollout, demo);
what they share is in deploy/cli/common.py.

Bad input prints one line on stderr and exits 2; a push that ends rolled back or rejected exits 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agent.cliutil import run_main
from deploy import __version__
from deploy.cli import collect, demo, fleet, keys, loop, push, rollout, secure, simulate, study
from deploy.convert.cli import add_convert_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"edgeloop {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    keys.add_parser(sub)
    push.add_parser(sub)
    push.add_command_parser(sub)
    push.add_rollback_parser(sub)
    add_convert_parser(sub)
    fleet.add_parser(sub)
    loop.add_loop_parsers(sub)
    rollout.add_rollout_parser(sub)
    simulate.add_simulate_parser(sub)
    collect.add_collect_parser(sub)
    collect.add_retention_parser(sub)
    demo.add_parser(sub)
    secure.add_parser(sub)
    study.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)
