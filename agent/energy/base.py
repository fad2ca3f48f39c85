"""The one interface every energy meter implements, and the factory that builds them from a spec.

A meter spec is ``KIND[:ARG][?opt=value&opt=value]``, for example::

    um25c:/dev/rfcomm0
    serial_lines:/dev/ttyACM0?format=csv&fields=ms,mV,mA
    hwmon:/sys/class/hwmon/hwmon2?sensor=power1
    powercap:/sys/class/powercap/intel-rapl:0
    pi5_pmic
    estimate:rpi4b

Only the first ``:`` separates KIND from ARG (sysfs paths contain colons). A meter object does no
I/O when it is built: it connects on the first :meth:`Meter.read` and again after
:meth:`Meter.close`, so the sampler can reconnect a meter that was unplugged.
"""

from __future__ import annotations

import importlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from agent.errors import ConfigError, MeterError

log = logging.getLogger(__name__)

# Modules that register meter kinds; imported on first use of the registry.
_METER_MODULES = ("um25c", "serial_lines", "hwmon", "powercap", "pi5_pmic", "estimate")

# Short codes used as the first word of a ``missing_reason``.
GONE = "meter_gone"  # the port / file disappeared (unplugged)
SILENT = "meter_silent"  # nothing (complete) arrived before the timeout
GARBAGE = "meter_garbage"  # bytes arrived but no valid reading could be decoded
WRONG_MODEL = "meter_wrong_model"  # a device answered, but not the one we speak to
UNSUPPORTED = "meter_unsupported"  # the platform cannot provide this meter at all


def meter_error(code: str, message: str, hint: str | None = None) -> MeterError:
    """A MeterError whose code says which kind of failure it was (see the constants above)."""
    return MeterError(message, hint=hint, code=code)


@dataclass(frozen=True)
class Sample:
    """One power reading.

    ``t`` is ``time.monotonic()`` seconds (the clock inference timing uses). The sampler holds a
    sample's ``watts`` until the next sample, so a meter that knows the *average* power over an
    interval (energy counters, the CPU model) reports it at the interval's start.
    """

    t: float
    watts: float

    def to_dict(self) -> dict[str, float]:
        return {"t": self.t, "watts": self.watts}


@dataclass(frozen=True)
class MeterSpec:
    """A parsed ``KIND:ARG?opt=v`` string."""

    kind: str
    arg: str
    options: Mapping[str, str]

    @classmethod
    def parse(cls, spec: str) -> MeterSpec:
        text = spec.strip()
        if not text:
            raise ConfigError(
                "empty meter spec", hint="use KIND:ARG, e.g. um25c:/dev/rfcomm0 or estimate:rpi4b"
            )
        head, _, query = text.partition("?")
        kind, _, arg = head.partition(":")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as exc:
            raise ConfigError(
                f"meter spec {spec!r}: options {query!r} are not opt=value pairs joined by '&'"
            ) from exc
        return cls(kind=kind.strip().lower(), arg=arg.strip(), options=dict(pairs))


class Meter(ABC):
    """A source of power readings. Subclasses set ``kind`` and ``option_help``.

    ``read()`` returns one or more new samples (a polled meter returns one; a meter that streams
    lines returns all lines that arrived) or raises :class:`MeterError` with one of the codes
    above. ``read()`` (re)connects when needed; ``close()`` drops the connection.
    """

    kind: ClassVar[str] = ""
    measured: ClassVar[bool] = True
    streaming: ClassVar[bool] = False  # True: read() blocks until data arrives; no poll sleep
    default_interval_s: ClassVar[float] = 1.0
    option_help: ClassVar[Mapping[str, str]] = {}
    common_options: ClassVar[Mapping[str, str]] = {
        "interval": "seconds between polls (default per meter)",
    }

    def __init__(self, arg: str = "", options: Mapping[str, str] | None = None) -> None:
        self.arg = arg
        self.options: dict[str, str] = dict(options or {})
        unknown = sorted(set(self.options) - set(self.option_help) - set(self.common_options))
        if unknown:
            known = ", ".join(sorted({*self.option_help, *self.common_options}))
            raise ConfigError(
                f"meter {self.kind}: unknown option(s) {', '.join(unknown)}",
                hint=f"known options: {known}",
            )
        self.interval_s = self.float_option("interval", self.default_interval_s, minimum=0.001)

    @property
    def source(self) -> str:
        """``kind:arg`` as given (what every energy figure names as its source)."""
        return f"{self.kind}:{self.arg}" if self.arg else self.kind

    def float_option(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(
                f"meter {self.kind}: option {name}={raw!r} is not a number >= {minimum}"
            )
        return value

    @abstractmethod
    def read(self) -> list[Sample]:
        """New samples since the last call (may be empty, e.g. a counter's first read); or raise
        MeterError."""

    def close(self) -> None:  # noqa: B027 - optional hook; most meters hold nothing open
        """Release the device; the next read() reconnects."""

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "measured": self.measured,
            "interval_s": self.interval_s,
        }


_REGISTRY: dict[str, type[Meter]] = {}


def register(cls: type[Meter]) -> type[Meter]:
    """Class decorator: make ``cls.kind`` available to :func:`open_meter`."""
    _REGISTRY[cls.kind] = cls
    return cls


def meter_kinds() -> dict[str, type[Meter]]:
    """Every registered meter kind (imports the meter modules on first call)."""
    for name in _METER_MODULES:
        importlib.import_module(f"agent.energy.{name}")
    return dict(_REGISTRY)


def open_meter(spec: str) -> Meter:
    """Build the meter a spec names. No I/O happens here; errors in the spec raise ConfigError."""
    parsed = MeterSpec.parse(spec)
    kinds = meter_kinds()
    cls = kinds.get(parsed.kind)
    if cls is None:
        raise ConfigError(
            f"unknown meter kind {parsed.kind!r} in {spec!r}",
            hint=f"use one of: {', '.join(sorted(kinds))}",
        )
    return cls(parsed.arg, parsed.options)


class EnergyCounter:
    """Turns a cumulative energy counter (microjoules) into average-power samples.

    Each reading after the first yields ``Sample(t_prev, delta_J / delta_t)``: the exact average
    over the interval, reported at its start so that sample-and-hold integrates to the counter's
    energy. ``wrap_uj`` is the counter's range (powercap ``max_energy_range_uj``); a counter that
    goes backwards without a known range is treated as reset and yields nothing.
    """

    def __init__(self, wrap_uj: int | None = None) -> None:
        self.wrap_uj = wrap_uj
        self._last: tuple[float, int] | None = None
        self.wraps = 0

    def reset(self) -> None:
        self._last = None

    def update(self, t: float, energy_uj: int) -> list[Sample]:
        last, self._last = self._last, (t, energy_uj)
        if last is None:
            return []
        t_prev, e_prev = last
        dt = t - t_prev
        if dt <= 0:
            return []
        delta = energy_uj - e_prev
        if delta < 0:
            if not self.wrap_uj:
                log.info("energy counter went backwards (%d -> %d): reset", e_prev, energy_uj)
                return []
            delta += self.wrap_uj
            self.wraps += 1
        return [Sample(t_prev, delta / 1e6 / dt)]
