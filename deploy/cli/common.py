"""What the `edge-deploy` command groups share: broker options, file checks, registry opening,
targets, trial gates and the line printer."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agent.errors import ConfigError
from deploy.mqtt import BrokerAddress


def host_config(args: argparse.Namespace) -> Any:
    """The host config file (--host-config or EDGELOOP_HOST_CONFIG), or None."""
    from deploy.hostconfig import ENV_FILE, load_host_config

    path = getattr(args, "host_config", None) or os.environ.get(ENV_FILE)
    return load_host_config(path) if path else None


def broker(args: argparse.Namespace) -> BrokerAddress:
    """The broker from the flags, falling back to the host config file, then 127.0.0.1:1883."""
    from deploy.hostconfig import tls_config

    cfg = host_config(args)
    address: BrokerAddress = cfg.broker if cfg is not None else BrokerAddress("127.0.0.1", 1883)
    if args.broker is not None:
        parsed = BrokerAddress.parse(args.broker)
        address = dataclasses.replace(address, host=parsed.host, port=parsed.port)
    if args.username is not None or args.password is not None:
        address = address.with_credentials(args.username, args.password)
    if args.tls_ca is not None or args.tls_cert is not None or args.tls_key is not None:
        address = address.with_tls(
            tls_config(args.tls_ca, args.tls_cert, args.tls_key, "--tls-ca/--tls-cert/--tls-key")
        )
    return address


def keys_dir(args: argparse.Namespace) -> str:
    """--keys, or the host config's [keys] dir."""
    if args.keys is not None:
        return str(args.keys)
    cfg = host_config(args)
    if cfg is None or cfg.keys is None:
        raise ConfigError(
            "no signing key directory",
            hint="pass --keys DIR (edge-deploy keys init) or set [keys] dir in --host-config",
        )
    return str(cfg.keys)


def broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host-config",
        default=None,
        help="host config file: broker, TLS, keys (edge-deploy provision --host; "
        "default: $EDGELOOP_HOST_CONFIG)",
    )
    p.add_argument(
        "--broker", default=None, help="HOST:PORT of the MQTT broker (default 127.0.0.1:1883)"
    )
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--tls-ca", default=None, help="CA file that signed the broker certificate")
    p.add_argument("--tls-cert", default=None, help="client certificate (host identity)")
    p.add_argument("--tls-key", default=None, help="its private key")
    p.add_argument("--prefix", default="edgeloop", help="topic prefix")


def existing_file(path: str | None, what: str, hint: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {path}: no such file or directory", hint=hint)
    return p


REGISTRY_HELP = "registry: a SQLite file, or a postgresql://USER@HOST/DB URL"


def open_registry(path: str, *, create: bool = False) -> Any:
    """The registry at ``path``: a SQLite file (``create``: made if missing) or a
    ``postgresql://`` URL (the database must exist; its tables are made on first use)."""
    from deploy.fleet.engine import is_url
    from deploy.fleet.registry import Registry

    if is_url(path):
        return Registry(path)
    p = Path(path)
    if not create and not p.is_file():
        raise ConfigError(
            f"registry {path}: no such file",
            hint="give the registry an `edge-deploy optimize` run wrote",
        )
    if create and not p.parent.is_dir():
        raise ConfigError(f"registry {path}: directory {p.parent} does not exist")
    return Registry(p)


def registry_dir(path: str) -> Path:
    """Where files kept beside the registry go: the SQLite file's directory, or the current
    directory for a PostgreSQL registry."""
    from deploy.fleet.engine import is_url

    return Path.cwd() if is_url(path) else Path(path).parent


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
