"""INA219 / INA226 bridges (Arduino, ESP32, Pico) that print one reading per line over serial.

The line format is configured, not guessed:

- CSV: ``format=csv&fields=ms,mV,mA`` names each column by its unit, in order. Units: ``V mV A
  mA W mW uW``; time columns (``s ms us``) and ``_`` are skipped (the host clock is used). A column
  may carry a name, ``t:ms,bus:mV,current:mA``; ``sep=;`` changes the separator.
- JSON lines: ``format=json&fields=v:V,i:A`` maps keys to units (default ``v:V,i:A``), e.g.
  ``{"v": 5.01, "i": 0.42}``.

Power is the W column when there is one, else V x I. Lines that do not parse (boot banners,
headers, a line cut by a reconnect, noise) are counted in ``bad_lines`` and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.energy.base import GARBAGE, SILENT, Meter, Sample, meter_error, register
from agent.energy.serialport import close_quietly, io_error, open_serial
from agent.errors import ConfigError, MeterError

log = logging.getLogger(__name__)

# unit (lower case) -> (quantity, factor to SI)
UNITS: dict[str, tuple[str, float]] = {
    "v": ("volts", 1.0),
    "mv": ("volts", 1e-3),
    "a": ("amps", 1.0),
    "ma": ("amps", 1e-3),
    "ua": ("amps", 1e-6),
    "w": ("watts", 1.0),
    "mw": ("watts", 1e-3),
    "uw": ("watts", 1e-6),
}
SKIPPED = {"s", "ms", "us", "_", "-", "skip"}
MAX_LINE = 512


@dataclass(frozen=True)
class Field:
    key: str  # CSV: column name (informative); JSON: the key read
    quantity: str  # volts | amps | watts | skip
    factor: float


def parse_fields(text: str, *, json_keys: bool) -> list[Field]:
    """``ms,mV,mA`` or ``v:V,i:A`` -> fields; ConfigError naming every bad token."""
    fields: list[Field] = []
    problems: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        name, sep, unit = token.rpartition(":")
        if not sep:
            name = unit = token
        if json_keys and not sep:
            problems.append(f"{token!r} needs key:unit (e.g. v:V)")
            continue
        lowered = unit.lower()
        if lowered in SKIPPED:
            fields.append(Field(name, "skip", 0.0))
        elif lowered in UNITS:
            quantity, factor = UNITS[lowered]
            fields.append(Field(name, quantity, factor))
        else:
            problems.append(f"{token!r} has unknown unit {unit!r}")
    quantities = {f.quantity for f in fields}
    if not problems and "watts" not in quantities and not {"volts", "amps"} <= quantities:
        problems.append("need a power column (W/mW) or both a voltage and a current column")
    if problems:
        raise ConfigError(
            f"serial_lines fields={text!r}: " + "; ".join(problems),
            hint="units are V mV A mA uA W mW uW; s ms us _ are skipped",
        )
    return fields


def power_of(values: Mapping[str, float]) -> float:
    if "watts" in values:
        return values["watts"]
    return values["volts"] * values["amps"]


class LineParser:
    """One text line -> watts, or None for a line that is not a reading."""

    def __init__(self, fmt: str, fields: list[Field], sep: str = ",") -> None:
        self.fmt = fmt
        self.fields = fields
        self.sep = sep

    def parse(self, line: str) -> float | None:
        line = line.strip()
        if not line:
            return None
        values = self._parse_json(line) if self.fmt == "json" else self._parse_csv(line)
        if values is None:
            return None
        try:
            watts = power_of(values)
        except KeyError:
            return None
        return watts if math.isfinite(watts) else None

    def _parse_csv(self, line: str) -> dict[str, float] | None:
        cells = [c.strip() for c in line.split(self.sep)]
        if len(cells) != len(self.fields):
            return None
        values: dict[str, float] = {}
        for cell, field in zip(cells, self.fields, strict=True):
            if field.quantity == "skip":
                continue
            try:
                values[field.quantity] = float(cell) * field.factor
            except ValueError:
                return None
        return values

    def _parse_json(self, line: str) -> dict[str, float] | None:
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        values: dict[str, float] = {}
        for field in self.fields:
            raw = obj.get(field.key)
            if field.quantity == "skip" or raw is None:
                continue
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                return None
            values[field.quantity] = float(raw) * field.factor
        return values


@register
class SerialLinesMeter(Meter):
    """``serial_lines:/dev/ttyACM0?format=csv&fields=ms,mV,mA[&baud=115200&timeout=2]``."""

    kind: ClassVar[str] = "serial_lines"
    streaming: ClassVar[bool] = True
    default_interval_s: ClassVar[float] = 0.1
    option_help: ClassVar[dict[str, str]] = {
        "format": "csv (default) or json",
        "fields": "CSV: units per column (default V,A); JSON: key:unit pairs (default v:V,i:A)",
        "sep": "CSV separator (default ,)",
        "baud": "serial speed (default 115200)",
        "timeout": "seconds without a valid line before the meter counts as silent (default 2)",
    }

    def __init__(self, arg: str = "", options: dict[str, str] | None = None) -> None:
        super().__init__(arg, options)
        if not arg:
            raise ConfigError(
                "serial_lines meter needs a serial port, e.g. serial_lines:/dev/ttyACM0"
            )
        fmt = self.options.get("format", "csv").lower()
        if fmt not in ("csv", "json"):
            raise ConfigError(f"serial_lines: format={fmt!r} is not csv or json")
        default_fields = "v:V,i:A" if fmt == "json" else "V,A"
        fields = parse_fields(self.options.get("fields", default_fields), json_keys=fmt == "json")
        self.parser = LineParser(fmt, fields, self.options.get("sep", ","))
        self.baud = int(self.float_option("baud", 115200, minimum=1))
        self.timeout_s = self.float_option("timeout", 2.0, minimum=0.01)
        self._port: Any = None
        self._partial = bytearray()
        self.lines = 0
        self.bad_lines = 0

    def close(self) -> None:
        close_quietly(self._port)
        self._port = None
        self._partial.clear()

    def read(self) -> list[Sample]:
        if self._port is None:
            self._port = open_serial(self.arg, baudrate=self.baud, timeout=0.05)
            self._partial.clear()
        try:
            return self._read_lines()
        except MeterError:
            raise
        except Exception as exc:  # SerialException, OSError (EIO when the device vanishes)
            raise io_error(self.arg, exc) from exc

    def _read_lines(self) -> list[Sample]:
        deadline = time.monotonic() + self.timeout_s
        bad_before = self.bad_lines
        while True:
            chunk = self._port.read(max(1, self._port.in_waiting))
            now = time.monotonic()
            samples = self._consume(chunk, now) if chunk else []
            if samples:
                return samples
            if now >= deadline:
                if self.bad_lines > bad_before:
                    raise meter_error(
                        GARBAGE,
                        f"{self.arg}: {self.bad_lines - bad_before} line(s) in"
                        f" {self.timeout_s:g} s, none a valid reading for the configured format",
                        f"check format/fields (now {self.parser.fmt}, "
                        f"{','.join(f.key for f in self.parser.fields)}) and the baud rate",
                    )
                raise meter_error(
                    SILENT,
                    f"{self.arg}: no reading for {self.timeout_s:g} s",
                    "is the bridge powered and printing?",
                )

    def _consume(self, chunk: bytes, now: float) -> list[Sample]:
        self._partial += chunk
        samples: list[Sample] = []
        *lines, rest = self._partial.split(b"\n")
        self._partial = bytearray(rest)
        if len(self._partial) > MAX_LINE:  # a stream without newlines is not a line meter
            self.bad_lines += 1
            self._partial.clear()
        for raw in lines:
            watts = self.parser.parse(raw.decode("utf-8", "replace"))
            if watts is None:
                self.bad_lines += 1
                log.debug("%s: skipped line %r", self.arg, raw[:80])
                continue
            self.lines += 1
            samples.append(Sample(now, watts))
        return samples

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(lines=self.lines, bad_lines=self.bad_lines)
        return out
