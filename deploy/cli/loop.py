"""`edge-deploy optimize | report`: the closed loop's host commands (`rollout` is in
deploy/cli/rollout.py).

    edge-deploy optimize MODEL --source SRC --targets FILE --broker HOST:PORT --keys DIR
                --registry FILE [--calibration DATA] [--validation DATA] [--recipes a,b]
                [--class CLASS ...] [--timeout S] [--service [--poll S]] [--json]
    edge-deploy report MODEL --registry FILE [--targets FILE] [--out DIR]

Exit status: 0 done (every class converged / rollout done / report written), 1 not (a class
infeasible or timed out / rollout aborted), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from deploy.cli.common import (
    REGISTRY_HELP,
    broker,
    broker_options,
    existing_file,
    gates,
    keys_dir,
    open_registry,
    printer,
    read_targets,
    registry_dir,
)
from deploy.convert.cli import stdout_to_stderr
from deploy.fleet.registry_types import Variant
from deploy.fleet.rollout import Deployer
from deploy.push import PushResult

EXIT_OK, EXIT_FAILED = 0, 1
KEYS_HINT = "make one with `edge-deploy keys init --dir DIR`"


@dataclass
class ReportingDeployer(Deployer):
    """A :class:`Deployer` that says what each push does (for the command line)."""

    say: Callable[[str], None] = print

    def push(self, device: str, variant: Variant, *, reason: str = "") -> PushResult:
        self.say(
            f"{device}: installing {variant.recipe} ({variant.id})"
            + (f" [{reason}]" if reason else "")
        )
        try:
            result = super().push(device, variant, reason=reason)
        except Exception as exc:
            self.say(f"{device}: push of {variant.recipe} failed: {exc}")
            raise
        self.say(f"{device}: {variant.recipe} {result.outcome}: {result.message}")
        return result


@contextlib.contextmanager
def fleet_session(args: argparse.Namespace, registry: Any) -> Iterator[tuple[Any, Any]]:
    """A running Collector on the broker, and the deployer (pushes reported on stderr)."""
    from deploy.fleet.collector import Collector
    from deploy.keys import load_private

    key = load_private(keys_dir(args))
    address = broker(args)
    collector = Collector(registry, address, prefix=args.prefix).start()
    try:
        deployer = ReportingDeployer(
            registry,
            address,
            key,
            args.model,
            prefix=args.prefix,
            gates=gates(args),
            timeout_s=args.push_timeout,
            say=printer(sys.stderr),
        )
        yield collector, deployer
    finally:
        collector.stop()


# ---- optimize -----------------------------------------------------------------------------------
def _variant_line(v: Variant) -> str:
    acc = f"{v.accuracy:.4f}" if v.accuracy is not None else "-"
    state = "ok" if v.available else f"unavailable: {v.unavailable_reason}"
    return f"  {v.recipe:<13} {v.size / 1024:8.1f} KiB  accuracy {acc}  {state}"


def _summary(registry: Any, run: Any) -> dict[str, Any]:
    out: dict[str, Any] = run.summary()
    v = registry.variant(out["variant"]) if out.get("variant") else None
    out["recipe"] = v.recipe if v else None
    out["decisions"] = [
        {"action": d.action, "variant": d.variant, "reason": d.reason} for d in run.decisions
    ]
    return out


def _print_runs(registry: Any, runs: list[Any], say: Callable[[str], None]) -> None:
    for r in runs:
        s = _summary(registry, r)
        rollout = s.get("rollout") or {}
        extra = f", rollout {rollout.get('state')}" if rollout else ""
        say(
            f"{r.class_id}: {r.state}, chosen {s['recipe'] or '-'} after {r.trials} trial(s)"
            f"{extra}{'; ' + r.note if r.note else ''}"
        )


def cmd_optimize(args: argparse.Namespace) -> int:
    from deploy.convert.progress import Progress
    from deploy.loop.driver import LoopSettings, prepare_variants
    from deploy.loop.generate import Generator
    from deploy.loop.optimizer import Decision, EnoughRule
    from deploy.loop.service import LoopService, Trigger, wait_for_devices

    source = Path(args.source)
    existing_file(args.source, "source", "give a Keras file, SavedModel or .tflite")
    calib = existing_file(args.calibration, "calibration data", "see docs/convert.md (Data)")
    valid = existing_file(args.validation, "validation data", "see docs/convert.md (Data)")
    train = existing_file(args.train, "training data", "labelled, see docs/convert.md (Data)")
    existing_file(keys_dir(args), "key directory", KEYS_HINT)
    targets = read_targets(args.targets, args.model)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    registry = open_registry(args.registry, create=True)
    out = sys.stdout
    say = printer(sys.stderr if args.json else out)
    all_runs: dict[str, Any] = {}
    ok = False
    try:
        with fleet_session(args, registry) as (collector, deployer):
            out_dir = Path(args.out or registry_dir(args.registry) / "variants" / args.model)
            with stdout_to_stderr():
                variants = prepare_variants(
                    registry,
                    args.model,
                    source,
                    out_dir,
                    recipes=recipes,
                    calibration=calib,
                    validation=valid,
                    progress=Progress(None if args.json else sys.stderr),
                )
            for v in variants:
                say(_variant_line(v))
            found = wait_for_devices(registry, collector, args.classes, args.wait_devices)
            if not found and not args.service:
                say(
                    f"no online device{' of ' + ', '.join(args.classes) if args.classes else ''}"
                    f" after {args.wait_devices:g}s"
                )
                return EXIT_FAILED
            say("online: " + "; ".join(f"{c}: {', '.join(d)}" for c, d in found.items()))

            def show(cid: str, d: Decision) -> None:
                v = registry.variant(d.variant) if d.variant else None
                say(f"{cid}: {d.action} {v.recipe if v else '-'}: {d.reason}")

            def trigger(t: Trigger) -> None:
                say(f"{t.class_id}: running the loop: {t.reason}")

            generator = None
            if not args.no_generate:
                generator = Generator(
                    registry,
                    args.model,
                    source,
                    out_dir,
                    calibration=calib,
                    validation=valid,
                    train=train,
                    max_k=args.max_k,
                    say=say,
                )
            settings = LoopSettings(
                timeout_s=args.timeout,
                rule=EnoughRule(
                    min_windows=args.judge_windows, min_inferences=args.judge_inferences
                ),
            )
            service = LoopService(
                registry,
                deployer,
                targets,
                settings,
                classes=tuple(found),
                poll_s=args.poll,
                on_decision=show,
                on_trigger=trigger,
                generator=generator,
            )
            if args.service:
                return _serve(service, registry, say, args)
            runs = service.run_cycle(service.evaluate())
            _print_runs(registry, runs, say)
            all_runs = {r.class_id: _summary(registry, r) for r in runs}
            ok = bool(runs) and all(r.state == "done" for r in runs)
    finally:
        registry.close()
    if args.json:
        print(
            json.dumps(
                {"model": args.model, "ok": ok, "classes": list(all_runs.values())},
                indent=2,
                default=str,
            ),
            file=out,
        )
    return EXIT_OK if ok else EXIT_FAILED


def _serve(
    service: Any, registry: Any, say: Callable[[str], None], args: argparse.Namespace
) -> int:
    """``optimize --service``: cycles until SIGTERM/SIGINT."""
    if args.classes:
        service.classes = tuple(args.classes)
    else:
        service.classes = ()  # new classes are welcome

    def stop(_signum: int, _frame: Any) -> None:
        service.stop.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    say(f"service: polling every {args.poll:g}s; SIGTERM stops it")
    try:
        service.serve(lambda runs: _print_runs(registry, runs, say))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    say(f"service stopped after {service.cycles} cycle(s)")
    return EXIT_OK


# ---- report -------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from deploy.report import write_report

    targets_path = existing_file(args.targets, "targets", "give the model's targets TOML")
    read_targets(args.targets, args.model)  # validate before writing anything
    registry = open_registry(args.registry)
    try:
        if args.model not in registry.model_names():
            known = ", ".join(registry.model_names()) or "none"
            raise ConfigError(f"model {args.model!r} is not in {args.registry} (models: {known})")
        path = write_report(registry, args.model, Path(args.out), targets_path)
    finally:
        registry.close()
    print(str(path))
    return EXIT_OK


# ---- parsers ------------------------------------------------------------------------------------
def _fleet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (the registry's)")
    p.add_argument("--keys", default=None, help="key directory (default: --host-config's)")
    p.add_argument("--registry", required=True, help=REGISTRY_HELP)
    p.add_argument("--min-inferences", type=int, default=None, help="device trial gate")
    p.add_argument("--min-seconds", type=float, default=None, help="device trial gate")
    p.add_argument("--push-timeout", type=float, default=300.0, help="per push (s)")
    p.add_argument(
        "--wait-devices", type=float, default=10.0, help="seconds to wait for online devices"
    )
    p.add_argument("--json", action="store_true")
    broker_options(p)


def add_loop_parsers(sub: Any) -> None:
    p = sub.add_parser("optimize", help="find the variant per hardware class (the closed loop)")
    _fleet_options(p)
    p.add_argument("--source", required=True, help="Keras file, SavedModel or float .tflite")
    p.add_argument("--targets", required=True, help="targets TOML (docs/loop.md)")
    p.add_argument("--calibration", default=None)
    p.add_argument("--validation", default=None)
    p.add_argument("--train", default=None, help="labelled training data: enables the QAT step")
    p.add_argument("--recipes", default="fp32,fp16,dynamic-int8,int8,int16x8,selective,edgetpu")
    p.add_argument(
        "--no-generate",
        action="store_true",
        help="the recipes converted up front are the whole search space (no selective search, "
        "no QAT on demand)",
    )
    p.add_argument("--max-k", type=int, default=8, help="selective search: most operators kept")
    p.add_argument("--out", default=None, help="variants directory (default: next to registry)")
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        help="only this class (full id or hardware class); repeatable",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="loop timeout per run (s)")
    p.add_argument("--judge-windows", type=int, default=3, help="windows before judging")
    p.add_argument("--judge-inferences", type=int, default=100, help="inferences before judging")
    p.add_argument("--service", action="store_true", help="keep running until SIGTERM")
    p.add_argument("--poll", type=float, default=30.0, help="service re-evaluation period (s)")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("report", help="write the HTML report of a model")
    p.add_argument("model")
    p.add_argument("--registry", required=True, help=REGISTRY_HELP)
    p.add_argument("--targets", default=None)
    p.add_argument("--out", default="report", help="output directory")
    p.set_defaults(func=cmd_report)
