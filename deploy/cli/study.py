"""`edge-deploy study`: models x recipes, host accuracy and device latency (deploy/study.py).

    edge-deploy study SOURCE... --recipes LIST --device ID --broker HOST:PORT --keys DIR
        [--calibration DATA] [--validation DATA] [--train DATA] [--out DIR] [--json]

``--json`` prints one JSON row per (model, recipe) on stdout at the end (progress on stderr;
TensorFlow's own prints are pointed at stderr while converting); otherwise the rows go to
``--out`` as study.md (the seed table), study.csv, study.json and study.png, and the table is
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK
from agent.errors import ConfigError
from deploy.cli.common import broker, broker_options, existing_file, keys_dir, printer
from deploy.cli.loop import KEYS_HINT
from deploy.convert.cli import stdout_to_stderr

DEFAULT_RECIPES = "fp32,dynamic-int8,int8"


def cmd_study(args: argparse.Namespace) -> int:
    from deploy.convert.recipes import resolve
    from deploy.keys import load_private
    from deploy.study import DeviceLink, study
    from deploy.study_table import seed_table, write_all

    sources = [Path(s) for s in args.sources]
    for s in sources:
        existing_file(str(s), "source", "give a Keras file, SavedModel or float .tflite")
    recipes = [r.name for r in resolve(args.recipes)]
    if not recipes:
        raise ConfigError("--recipes names no recipe", hint=f"for example {DEFAULT_RECIPES}")
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: must be at least 1", hint="the default is 100")
    data = {
        role: existing_file(getattr(args, role), f"{role} data", "see docs/convert.md (Data)")
        for role in ("calibration", "validation", "train")
    }
    existing_file(keys_dir(args), "key directory", KEYS_HINT)
    link = DeviceLink(
        broker(args),
        args.device,
        load_private(keys_dir(args)),
        prefix=args.prefix,
        push_timeout_s=args.timeout,
        bench_timeout_s=args.timeout,
        bench_runs=args.runs,
    )
    out = Path(args.out)
    say = printer(sys.stderr)
    with stdout_to_stderr():  # TensorFlow prints; stdout is for the rows
        rows = study(
            sources,
            recipes,
            link,
            out,
            calibration=data["calibration"],
            validation=data["validation"],
            train=data["train"],
            backend=args.backend,
            say=say,
        )
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict()))
    else:
        paths = write_all(rows, out)
        print(seed_table(rows))
        if "plot" not in paths:
            say("no plot: matplotlib is not installed")
        say("wrote " + ", ".join(str(p) for p in paths.values()))
    ok = all(r.status in ("ok", "unavailable") for r in rows)
    return EXIT_OK if ok else EXIT_FAILED


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "study", help="models x recipes: host accuracy, device p50/p95 (the seed table)"
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="Keras, SavedModel or .tflite")
    p.add_argument("--recipes", default=DEFAULT_RECIPES, help="comma list, or 'all'")
    p.add_argument("--device", required=True, help="the device that measures every variant")
    p.add_argument("--keys", default=None, help="key directory (default: --host-config's)")
    p.add_argument("--calibration", default=None)
    p.add_argument("--validation", default=None, help="labelled: accuracy; else agreement")
    p.add_argument("--train", default=None, help="labelled training data (the qat recipe)")
    p.add_argument("--backend", default="auto", choices=["auto", "tf", "aiq"])
    p.add_argument("--runs", type=int, default=100, help="bench runs on the device")
    p.add_argument("--timeout", type=float, default=600.0, help="per push and per bench (s)")
    p.add_argument("--out", default="study", help="output directory")
    p.add_argument("--json", action="store_true", help="one JSON row per (model, recipe)")
    broker_options(p)
    p.set_defaults(func=cmd_study)
