"""The host configuration file: broker, TLS and signing keys, so an operator does not repeat them.

``edge-deploy provision --host NAME`` writes one; every host command (push, optimize, rollout,
fleet, watch, serve) reads it with ``--host-config FILE`` or ``EDGELOOP_HOST_CONFIG``:

    [broker]
    address = "mqtt.example.org:8884"   # the host listener (docs/transport.md)
    tls_ca = "/etc/edgeloop-host/ca.crt"
    tls_cert = "/etc/edgeloop-host/ops.crt"
    tls_key = "/etc/edgeloop-host/ops.key"
    # username = "..."; password = "..."   (password brokers; EDGELOOP_MQTT_PASSWORD overrides)

    [keys]
    dir = "/etc/edgeloop-host/keys"     # edge-deploy keys init --dir

Flags given on the command line win over the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.mqtt.types import TlsConfig
from deploy.mqtt import BrokerAddress

ENV_FILE = "EDGELOOP_HOST_CONFIG"
_BROKER_KEYS = frozenset({"address", "username", "password", "tls_ca", "tls_cert", "tls_key"})


@dataclass(frozen=True)
class HostConfig:
    broker: BrokerAddress
    keys: str | None = None


def tls_config(ca: str | None, cert: str | None, key: str | None, where: str) -> TlsConfig | None:
    """The client TLS settings, each file checked; None when no CA is given."""
    if ca is None:
        if cert is not None or key is not None:
            raise ConfigError(f"{where}: a client certificate needs the CA too (tls_ca)")
        return None
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: give both the client certificate and its key, or neither")
    for path in (ca, cert, key):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{where}: TLS file {path} does not exist")
    return TlsConfig(ca, cert, key)


def _str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def load_host_config(path: str | Path, environ: Mapping[str, str] | None = None) -> HostConfig:
    where = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"host config {path} does not exist",
            hint="make one with `edge-deploy provision --host NAME`",
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"host config {path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"broker", "keys"}
    broker = data.get("broker", {})
    keys = data.get("keys", {})
    if unknown or not isinstance(broker, dict) or not isinstance(keys, dict):
        raise ConfigError(f"{where}: only the tables [broker] and [keys] are known")
    if set(broker) - _BROKER_KEYS:
        raise ConfigError(
            f"{where}: unknown [broker] option(s) {sorted(set(broker) - _BROKER_KEYS)}",
            hint=f"known: {', '.join(sorted(_BROKER_KEYS))}",
        )
    env = os.environ if environ is None else environ
    address = BrokerAddress.parse(_str(broker, "address", where) or "127.0.0.1:1883")
    address = address.with_credentials(
        _str(broker, "username", where),
        env.get("EDGELOOP_MQTT_PASSWORD") or _str(broker, "password", where),
    ).with_tls(
        tls_config(
            _str(broker, "tls_ca", where),
            _str(broker, "tls_cert", where),
            _str(broker, "tls_key", where),
            where,
        )
    )
    return HostConfig(address, _str(keys, "dir", where))
