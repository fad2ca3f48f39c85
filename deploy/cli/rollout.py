"""`edge-deploy rollout`: a staged rollout of a registry variant to a hardware class.

    edge-deploy rollout MODEL --variant RECIPE_OR_ID --class CLASS --broker ... --keys DIR
                --registry FILE [--canary N] [--waves 25%,100%] [--success-ratio R]
                [--max-failure-ratio R] [--wave-timeout S] [--max-in-flight N]
                [--min-devices N] [--json]

Progress (devices done / failed / pending per wave, and the roll-back after an abort) is shown
live: a ``rich`` table when stdout is a terminal, one line per update otherwise (on stderr with
``--json``, whose stdout is the outcome). Exit status: 0 done, 1 aborted or no device, 2 bad
input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from deploy.cli.common import existing_file, keys_dir, open_registry, printer
from deploy.cli.loop import EXIT_FAILED, EXIT_OK, KEYS_HINT, _fleet_options, fleet_session
from deploy.cli.rollout_view import ProgressView
from deploy.fleet.registry_types import Variant


def resolve_variant(registry: Any, model: str, name: str) -> Variant:
    v: Variant | None = registry.variant(name)
    if v is None or v.model != model:
        matches = [x for x in registry.variants_for(model) if x.recipe == name]
        v = next((x for x in matches if x.available), matches[0] if matches else None)
    if v is None:
        known = ", ".join(sorted({x.recipe for x in registry.variants_for(model)})) or "none"
        raise ConfigError(
            f"model {model!r} has no variant {name!r} in the registry (recipes: {known})",
            hint="run `edge-deploy optimize` first",
        )
    if not v.available:
        raise ConfigError(f"variant {v.id} ({v.recipe}) is unavailable: {v.unavailable_reason}")
    if not Path(v.path).is_file():
        raise ConfigError(
            f"variant {v.id}: file {v.path} is missing",
            hint="convert again with `edge-deploy optimize`",
        )
    return v


def parse_waves(text: str) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        out.append(int(p) if p.isdigit() else p)
    if not out:
        raise ConfigError(f"--waves {text!r}: expected counts or percentages, e.g. 25%,100%")
    return tuple(out)


def _wait_for_fleet(args: argparse.Namespace, registry: Any, collector: Any) -> dict[str, Any]:
    """Online devices of the class, once ``--min-devices`` are in (or at ``--wait-devices``)."""
    from deploy.loop.service import wait_for_devices

    deadline = time.monotonic() + args.wait_devices
    while True:
        left = max(0.0, deadline - time.monotonic())
        found = wait_for_devices(registry, collector, [args.class_], left)
        if sum(map(len, found.values())) >= args.min_devices or left == 0.0:
            return found
        time.sleep(0.5)  # births still arriving: poll the registry again


def cmd_rollout(args: argparse.Namespace) -> int:
    from deploy.fleet.rollout import RolloutRunner
    from deploy.fleet.rollout_plan import RolloutPolicy
    from deploy.loop.service import class_matches, current_variant

    existing_file(keys_dir(args), "key directory", KEYS_HINT)
    if args.max_in_flight < 1:
        raise ConfigError(f"--max-in-flight {args.max_in_flight}: must be >= 1")
    registry = open_registry(args.registry)
    try:
        variant = resolve_variant(registry, args.model, args.variant)
        known = {c.id for c in registry.hardware_classes()}
        if not any(class_matches(c, [args.class_]) for c in known):
            raise ConfigError(
                f"class {args.class_!r} is not in the registry "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        waves = parse_waves(args.waves)
        stream = sys.stderr if args.json else sys.stdout
        say = printer(stream)
        with fleet_session(args, registry) as (collector, deployer):
            found = _wait_for_fleet(args, registry, collector)
            if len(found) > 1:
                raise ConfigError(
                    f"--class {args.class_!r} names several classes: {', '.join(found)}",
                    hint="give the full class id",
                )
            if not found:
                say(f"no online device of {args.class_} after {args.wait_devices:g}s")
                return EXIT_FAILED
            cid, devices = next(iter(found.items()))
            policy = RolloutPolicy(
                canary=args.canary,
                waves=waves,
                success_ratio=args.success_ratio,
                max_failure_ratio=args.max_failure_ratio,
                wave_timeout_s=args.wave_timeout,
            )
            policy.validate(len(devices))
            previous = {d: current_variant(registry, d) for d in devices}
            shown = ", ".join(devices[:5]) + (
                f" and {len(devices) - 5} more" if len(devices) > 5 else ""
            )
            say(
                f"rolling {variant.recipe} ({variant.id}) out to {len(devices)} device(s) of "
                f"{cid}: {shown}; canary {args.canary}, waves {','.join(map(str, waves))}"
            )
            with ProgressView(stream) as view:
                runner = RolloutRunner(
                    deployer,
                    variant,
                    previous,
                    class_id=cid,
                    policy=policy,
                    max_in_flight=args.max_in_flight,
                    on_progress=view.update,
                )
                outcome = runner.run(devices)
    finally:
        registry.close()
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        _print_outcome(outcome, say)
    return EXIT_OK if outcome.state == "done" else EXIT_FAILED


def _print_outcome(outcome: Any, say: Any, most: int = 20) -> None:
    say(
        f"rollout {outcome.rollout_id}: {outcome.state} in {outcome.seconds:.1f}s"
        + (f" ({outcome.reason})" if outcome.reason else "")
    )
    done = outcome.committed
    more = f" ... ({len(done)} in all)" if len(done) > most else ""
    say(f"  committed: {', '.join(done[:most]) or '-'}{more}")
    for d, why in list(outcome.failed.items())[:most]:
        say(f"  failed: {d}: {why}")
    if len(outcome.failed) > most:
        say(f"  ... and {len(outcome.failed) - most} more failed")
    backs = list(outcome.rolled_back.items())
    for d, how in backs[:most]:
        say(f"  rolled back: {d}: {how}")
    if len(backs) > most:
        say(f"  ... and {len(backs) - most} more rolled back")
    if outcome.withdrawn:
        say(f"  never notified (withdrawn at the abort): {len(outcome.withdrawn)}")


def add_rollout_parser(sub: Any) -> None:
    p = sub.add_parser("rollout", help="staged rollout of a variant to a hardware class")
    _fleet_options(p)
    p.add_argument("--variant", required=True, help="recipe name or variant id")
    p.add_argument("--class", dest="class_", required=True, help="hardware class or full id")
    p.add_argument("--canary", type=int, default=1)
    p.add_argument("--waves", default="25%,100%", help="counts or percentages")
    p.add_argument(
        "--success-ratio", type=float, default=1.0, help="of a wave committed before the next"
    )
    p.add_argument("--max-failure-ratio", type=float, default=0.2, help="of notified: abort")
    p.add_argument("--wave-timeout", type=float, default=600.0, help="seconds per wave")
    p.add_argument("--p95-gate", type=float, default=None, help="device trial gate on p95 (ms)")
    p.add_argument(
        "--max-in-flight", type=int, default=500, help="pushes announced and not yet answered"
    )
    p.add_argument(
        "--min-devices", type=int, default=1, help="wait (up to --wait-devices) for this many"
    )
    p.set_defaults(func=cmd_rollout)
