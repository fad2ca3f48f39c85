"""What the `edge-deploy` command groups share: broker options, file checks, registry opening,
targets, trial gates and the line printer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agent.errors import ConfigError
from deploy.mqtt import BrokerAddress


def broker(args: argparse.Namespace) -> BrokerAddress:
    return BrokerAddress.parse(args.broker).with_credentials(args.username, args.password)


def broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--prefix", default="edgeloop", help="topic prefix")


def existing_file(path: str | None, what: str, hint: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {path}: no such file or directory", hint=hint)
    return p


def open_registry(path: str, *, create: bool = False) -> Any:
    from deploy.fleet.registry import Registry

    p = Path(path)
    if not create and not p.is_file():
        raise ConfigError(
            f"registry {path}: no such file",
            hint="give the registry an `edge-deploy optimize` run wrote",
        )
    if create and not p.parent.is_dir():
        raise ConfigError(f"registry {path}: directory {p.parent} does not exist")
    return Registry(p)


def read_targets(path: str | None, model: str | None = None) -> Any:
    from deploy.loop.targets import load_targets

    p = existing_file(path, "targets", "give the model's targets TOML (see docs/loop.md)")
    if p is None:
        return None
    targets = load_targets(p)
    if model is not None and targets.model is not None and targets.model != model:
        raise ConfigError(
            f"targets {path} are for model {targets.model!r}, not {model!r}",
            hint="pass the targets file of this model",
        )
    return targets


def gates(args: argparse.Namespace) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if getattr(args, "p95_gate", None) is not None:
        out["p95_ms"] = args.p95_gate
    if args.min_inferences is not None:
        out["min_inferences"] = args.min_inferences
    if args.min_seconds is not None:
        out["min_seconds"] = args.min_seconds
    return out or None


def printer(stream: TextIO) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    return say
