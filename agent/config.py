"""Agent configuration: a TOML file, environment overrides for secrets, and command-line flags.

Everything is validated at start and every problem is reported at once (``ConfigError`` whose
message lists them all), so a device never runs half-configured. See ``docs/configuration.md``
for every option; ``example_toml()`` prints a commented file with the defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
KNOWN_RUNTIMES = ("ai-edge-litert", "tflite-runtime", "tensorflow")

# Environment variables that override the file (secrets never need to be in it).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "EDGELOOP_DEVICE_ID": ("", "device_id"),
    "EDGELOOP_STATE_DIR": ("", "state_dir"),
    "EDGELOOP_MQTT_HOST": ("broker", "host"),
    "EDGELOOP_MQTT_PORT": ("broker", "port"),
    "EDGELOOP_MQTT_USERNAME": ("broker", "username"),
    "EDGELOOP_MQTT_PASSWORD": ("broker", "password"),
}


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edgeloop"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0


@dataclass(frozen=True)
class RuntimeConfig:
    preference: tuple[str, ...] = KNOWN_RUNTIMES
    delegate: str = "auto"
    threads: int = 0  # 0 = the number of big cores
    edgetpu_library: str | None = None


@dataclass(frozen=True)
class TelemetryConfig:
    interval_s: float = 10.0
    outbox_max_mb: float = 20.0
    outbox_max_age_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class HealthConfig:
    """Gates a new model must pass during trial before it is committed."""

    min_inferences: int = 50
    min_seconds: float = 5.0
    max_seconds: float = 120.0
    p95_ms: float | None = None  # None: the manifest's target x 1.1, else no latency gate
    max_rss_mb: float | None = None
    probe_timeout_s: float = 60.0
    probe_memory_mb: int = 2048


@dataclass(frozen=True)
class LimitsConfig:
    disk_mb: float = 512.0
    max_model_mb: float = 256.0
    max_payload_kb: int = 1024
    transfer_window_kb: int = 2048  # model bytes requested and not yet received


@dataclass(frozen=True)
class LoadgenConfig:
    rate_hz: float = 0.0  # 0 = off; > 0 runs the built-in load generator


@dataclass(frozen=True)
class EnergyConfig:
    meter: str | None = None  # e.g. "um25c:/dev/rfcomm0", "estimate:rpi4b"
    idle_baseline_s: float = 5.0


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = ""
    state_dir: str = "/var/lib/edgeloop"
    hw_root: str = "/"
    trust_keys: tuple[str, ...] = ()
    slot: str = "main"  # the model slot this device serves (agent.wire.manifest.DEFAULT_SLOT)
    #: Refuse a manifest that names no device or class (``targets``); provisioned devices set it.
    require_targets: bool = False
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    loadgen: LoadgenConfig = field(default_factory=LoadgenConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if redact and out["broker"].get("password"):
            out["broker"]["password"] = "***"
        return out


_SECTIONS: dict[str, type] = {
    "broker": BrokerConfig,
    "runtime": RuntimeConfig,
    "telemetry": TelemetryConfig,
    "health": HealthConfig,
    "limits": LimitsConfig,
    "loadgen": LoadgenConfig,
    "energy": EnergyConfig,
}


def _coerce(value: Any, default: Any, where: str, problems: list[str]) -> Any:
    """Coerce a TOML/env value to the type of the field's default, recording problems."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        problems.append(f"{where}: expected true/false, got {value!r}")
        return default
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: expected an integer, got {value!r}")
            return default
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: expected a number, got {value!r}")
            return default
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: expected a list of strings, got {value!r}")
            return default
        return tuple(value)
    # str or optional (None default): accept strings and numbers as given
    if value is None or isinstance(value, str | int | float):
        return value
    problems.append(f"{where}: expected a string, got {value!r}")
    return default


def _build(cls: type, data: Mapping[str, Any], where: str, problems: list[str]) -> Any:
    defaults = cls()
    kwargs: dict[str, Any] = {}
    names = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in names:
            problems.append(f"{where}{key}: unknown option (known: {', '.join(sorted(names))})")
            continue
        default = getattr(defaults, key)
        if is_dataclass(default):
            if not isinstance(value, Mapping):
                problems.append(f"{where}{key}: expected a table [{key}]")
                continue
            kwargs[key] = _build(type(default), value, f"{where}{key}.", problems)
        elif default is None and key in ("p95_ms", "max_rss_mb"):
            kwargs[key] = _coerce(value, 0.0, f"{where}{key}", problems)
        else:
            kwargs[key] = _coerce(value, default, f"{where}{key}", problems)
    return replace(defaults, **kwargs)


def _validate(cfg: AgentConfig, problems: list[str]) -> None:
    if not cfg.device_id:
        problems.append(
            "device_id: required (set it in the file, --device-id or EDGELOOP_DEVICE_ID)"
        )
    elif not DEVICE_ID_RE.match(cfg.device_id):
        problems.append(
            f"device_id: {cfg.device_id!r} must be 1-64 of A-Z a-z 0-9 . _ - "
            "(it becomes an MQTT topic level)"
        )
    if not DEVICE_ID_RE.match(cfg.slot):
        problems.append(f"slot: {cfg.slot!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    b = cfg.broker
    if not 0 < b.port < 65536:
        problems.append(f"broker.port: {b.port} is not a TCP port")
    if not PREFIX_RE.match(b.prefix):
        problems.append(f"broker.prefix: {b.prefix!r} may not contain wildcards or empty levels")
    if b.keepalive_s < 2:
        problems.append("broker.keepalive_s: must be >= 2")
    if b.reconnect_min_s <= 0 or b.reconnect_max_s < b.reconnect_min_s:
        problems.append("broker.reconnect_min_s/max_s: need 0 < min <= max")
    if (b.tls_cert is None) != (b.tls_key is None):
        problems.append("broker.tls_cert and broker.tls_key: give both or neither")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(b, name)
        if path is not None and not Path(path).is_file():
            problems.append(f"broker.{name}: file {path} does not exist")
    for rt in cfg.runtime.preference:
        if rt not in KNOWN_RUNTIMES:
            problems.append(f"runtime.preference: unknown runtime {rt!r} (known: {KNOWN_RUNTIMES})")
    d = cfg.runtime.delegate
    if not (d in ("auto", "cpu", "edgetpu") or d.startswith(("edgetpu:", "external:"))):
        problems.append(
            f"runtime.delegate: {d!r} is not auto, cpu, edgetpu[:usb|:usb:N|:pci|:pci:N] "
            "or external:/path/to/lib.so"
        )
    if cfg.runtime.threads < 0:
        problems.append("runtime.threads: must be >= 0 (0 = number of big cores)")
    if cfg.telemetry.interval_s <= 0:
        problems.append("telemetry.interval_s: must be > 0")
    if cfg.limits.disk_mb <= 0 or cfg.limits.max_model_mb <= 0:
        problems.append("limits.disk_mb and limits.max_model_mb: must be > 0")
    if cfg.limits.transfer_window_kb < 64:
        problems.append("limits.transfer_window_kb: must be >= 64")
    if cfg.loadgen.rate_hz < 0:
        problems.append("loadgen.rate_hz: must be >= 0")
    for key in cfg.trust_keys:
        if not Path(key).is_file():
            problems.append(f"trust_keys: public key file {key} does not exist")
    if not cfg.trust_keys:
        problems.append(
            "trust_keys: at least one host public key is required "
            "(edge-deploy keys init prints its path; pass --trust-key FILE)"
        )
    if not Path(cfg.hw_root).is_dir():
        problems.append(f"hw_root: {cfg.hw_root} is not a directory")


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read the file (optional), apply env overrides then flag overrides, validate everything.

    ``overrides`` uses dotted keys (``"broker.port"``, ``"device_id"``); ``None`` values are
    ignored.
    """
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    env = os.environ if environ is None else environ
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env:
            (data.setdefault(section, {}) if section else data)[key] = env[var]
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, key = dotted.split(".")
        target = data
        for p in parents:
            target = target.setdefault(p, {})
        target[key] = value
    cfg: AgentConfig = _build(AgentConfig, data, "", problems)
    _validate(cfg, problems)
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"{len(problems)} configuration problem(s){where}:\n  - " + "\n  - ".join(problems),
            hint="fix them and start again; `edge-agent config-example` prints every option",
        )
    return cfg


def example_toml() -> str:
    """A commented configuration file with every option at its default."""
    lines = [
        "# edgeloop agent configuration (every option at its default).",
        "# Environment overrides: " + ", ".join(ENV_OVERRIDES) + ".",
        'device_id = "pi-01"              # MQTT topic level; also --device-id',
        'state_dir = "/var/lib/edgeloop"  # models, staging, pointers, outbox',
        'hw_root = "/"                    # read hardware facts under this root',
        'trust_keys = ["/etc/edgeloop/trust/host.pub"]  # Ed25519 public keys of the host',
        'slot = "main"                    # model slot served: manifests for another are refused',
        "require_targets = false          # true: refuse manifests naming no device or class",
    ]
    defaults = AgentConfig()
    for section in _SECTIONS:
        lines.append("")
        lines.append(f"[{section}]")
        for f in fields(getattr(defaults, section)):
            value = getattr(getattr(defaults, section), f.name)
            if value is None:
                lines.append(f"# {f.name} = ")
            elif isinstance(value, bool):
                lines.append(f"{f.name} = {str(value).lower()}")
            elif isinstance(value, str):
                lines.append(f'{f.name} = "{value}"')
            elif isinstance(value, tuple):
                lines.append(f"{f.name} = [" + ", ".join(f'"{v}"' for v in value) + "]")
            else:
                lines.append(f"{f.name} = {value}")
    return "\n".join(lines) + "\n"
