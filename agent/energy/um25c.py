"""RuiDeng (RDTech) UM24C / UM25C / UM34C USB meters over Bluetooth (rfcomm) or USB serial.

Protocol (sigrok wiki "RDTech UM series"; libsigrok ``src/hardware/rdtech-um``; confirmed
against the um25c-client and um25c-mqtt field layouts): send the byte ``0xF0``; the meter answers
with a 130-byte record, all fields big-endian:

====== ====== ===========================================================================
offset bytes  field
====== ====== ===========================================================================
0      2      model id: 0x0963 UM24C, 0x09C9 UM25C, 0x0D4C UM34C
2      2      voltage: UM25C 1 mV units, UM24C/UM34C 10 mV units
4      2      current: UM25C 0.1 mA units, UM24C/UM34C 1 mA units
6      4      power, mW
10     2      temperature, degrees C (12: degrees F)
14     2      selected data group (16..95: 10 groups of mAh, mWh as u32 pairs)
96/98  2+2    USB D+ / D- voltage, 10 mV units
122    4      load resistance, 0.1 ohm units
128    2      UM24C/UM25C: constant 0xFFF1; UM34C: byte 129 = XOR of 32 fixed positions
====== ====== ===========================================================================

The meter refreshes its readings about twice a second, so polling faster gives repeated values.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.energy.base import (
    GARBAGE,
    SILENT,
    WRONG_MODEL,
    Meter,
    Sample,
    meter_error,
    register,
)
from agent.energy.serialport import close_quietly, io_error, open_serial
from agent.errors import ConfigError, MeterError

log = logging.getLogger(__name__)

REQUEST = b"\xf0"
RECORD_LEN = 130
MODELS: dict[int, str] = {0x0963: "UM24C", 0x09C9: "UM25C", 0x0D4C: "UM34C"}
# (volts per unit, amps per unit)
SCALE: dict[str, tuple[float, float]] = {
    "UM24C": (0.01, 0.001),
    "UM25C": (0.001, 0.0001),
    "UM34C": (0.01, 0.001),
}
# fmt: skip below: a table of 32 byte offsets; one per line would hide it over 34 lines
_UM34C_CHECKSUM_POSITIONS = (
    1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67, 69, 73, 79, 83, 89,
    97, 99, 109, 111, 113, 119, 121, 127,
)  # fmt: skip


@dataclass(frozen=True)
class UmRecord:
    """One decoded 130-byte record."""

    model: str
    volts: float
    amps: float
    watts_field: float  # the meter's own 1 mW power field
    temp_c: int
    data_group: int
    resistance_ohm: float

    @property
    def watts(self) -> float:
        """V x I from the finer-grained fields (UM25C: 1 mV x 0.1 mA)."""
        return self.volts * self.amps


def trailer_ok(model: str, record: bytes) -> bool:
    if model == "UM34C":
        checksum = 0
        for pos in _UM34C_CHECKSUM_POSITIONS:
            checksum ^= record[pos]
        return record[RECORD_LEN - 1] == checksum
    return record[RECORD_LEN - 2 : RECORD_LEN] == b"\xff\xf1"


def parse_record(record: bytes) -> UmRecord:
    """Decode one record; MeterError if it is not a valid UM24C/UM25C/UM34C record."""
    if len(record) != RECORD_LEN:
        raise meter_error(GARBAGE, f"UM record is {len(record)} bytes, expected {RECORD_LEN}")
    model_id = struct.unpack_from(">H", record, 0)[0]
    model = MODELS.get(model_id)
    if model is None:
        raise meter_error(
            WRONG_MODEL,
            f"device answered with model id 0x{model_id:04x}, not a UM24C/UM25C/UM34C",
            "is this port really an RDTech UM meter?",
        )
    if not trailer_ok(model, record):
        raise meter_error(GARBAGE, f"{model} record fails its trailer/checksum check")
    v_unit, a_unit = SCALE[model]
    raw_v, raw_a, mw, temp_c, _temp_f, group = struct.unpack_from(">HHIHHH", record, 2)
    (resistance,) = struct.unpack_from(">I", record, 122)
    return UmRecord(
        model=model,
        volts=raw_v * v_unit,
        amps=raw_a * a_unit,
        watts_field=mw / 1000.0,
        temp_c=temp_c,
        data_group=group,
        resistance_ohm=resistance / 10.0,
    )


def find_record(buf: bytearray, expect: str | None = None) -> tuple[UmRecord | None, int]:
    """Scan ``buf`` for a valid record. Returns (record or None, bytes to drop from the front).

    Resynchronises like libsigrok: a record starts where a known model id sits and is followed,
    130 bytes on, by a valid trailer; anything before it is garbage. With ``expect`` set, only
    that model's id starts a record.
    """
    ids = [i for i, m in MODELS.items() if expect is None or m == expect]
    starts = {struct.pack(">H", i) for i in ids}
    pos = 0
    while pos + 2 <= len(buf):
        if bytes(buf[pos : pos + 2]) in starts:
            if len(buf) - pos < RECORD_LEN:
                return None, pos  # maybe the start of a record still arriving
            candidate = bytes(buf[pos : pos + RECORD_LEN])
            try:
                return parse_record(candidate), pos + RECORD_LEN
            except MeterError:
                pass  # a model id inside garbage; keep scanning
        pos += 1
    return None, max(0, len(buf) - 1)


@register
class UM25CMeter(Meter):
    """``um25c:/dev/rfcomm0[?model=um25c&baud=9600&timeout=1.5&interval=0.5]``."""

    kind: ClassVar[str] = "um25c"
    default_interval_s: ClassVar[float] = 0.5
    option_help: ClassVar[dict[str, str]] = {
        "model": "um24c|um25c|um34c: refuse any other model (default: accept all three)",
        "baud": "serial speed (default 9600, the meters' Bluetooth and USB rate)",
        "timeout": "seconds to wait for a whole record (default 1.5)",
    }

    def __init__(self, arg: str = "", options: dict[str, str] | None = None) -> None:
        super().__init__(arg, options)
        if not arg:
            raise ConfigError("um25c meter needs a serial port, e.g. um25c:/dev/rfcomm0")
        model = self.options.get("model")
        self.expect: str | None = None
        if model is not None:
            self.expect = model.upper()
            if self.expect not in SCALE:
                raise ConfigError(f"um25c: model={model!r} is not um24c, um25c or um34c")
        self.baud = int(self.float_option("baud", 9600, minimum=1))
        self.timeout_s = self.float_option("timeout", 1.5, minimum=0.01)
        self._port: Any = None
        self.model: str | None = None  # detected
        self.bad_bytes = 0  # garbage skipped while resynchronising
        self.records = 0
        self.last: UmRecord | None = None

    def close(self) -> None:
        close_quietly(self._port)
        self._port = None

    def read(self) -> list[Sample]:
        if self._port is None:
            self._port = open_serial(self.arg, baudrate=self.baud, timeout=0.05)
        try:
            return [self._poll()]
        except MeterError:
            raise
        except Exception as exc:  # SerialException, OSError (EIO when the pty/rfcomm vanishes)
            raise io_error(self.arg, exc) from exc

    def _poll(self) -> Sample:
        port = self._port
        port.reset_input_buffer()  # stale bytes from an earlier, late answer
        t_sent = time.monotonic()
        port.write(REQUEST)
        port.flush()
        buf = bytearray()
        head = bytearray()  # the first bytes of the answer, for the error message
        received = 0
        deadline = t_sent + self.timeout_s
        while True:
            chunk = port.read(max(1, port.in_waiting or RECORD_LEN))
            if chunk:
                received += len(chunk)
                if len(head) < 2:
                    head += chunk[: 2 - len(head)]
                buf += chunk
                record, drop = find_record(buf, None)
                if drop:
                    self.bad_bytes += drop - (RECORD_LEN if record else 0)
                    del buf[:drop]
                if record is not None:
                    return self._accept(record, t_sent)
            if time.monotonic() >= deadline:
                raise self._timeout_error(bytes(head), received)

    def _accept(self, record: UmRecord, t_sent: float) -> Sample:
        if self.expect is not None and record.model != self.expect:
            raise meter_error(
                WRONG_MODEL,
                f"{self.arg} is a {record.model}, but model={self.expect.lower()} was configured",
                "fix the model option or the port",
            )
        if self.model != record.model:
            log.info("%s: %s detected", self.arg, record.model)
            self.model = record.model
        self.records += 1
        self.last = record
        # the answer describes the meter's state between request and reply
        t_mid = (t_sent + time.monotonic()) / 2
        return Sample(t_mid, record.watts)

    def _timeout_error(self, head: bytes, received: int) -> MeterError:
        if not received:
            return meter_error(
                SILENT,
                f"{self.arg}: no answer to 0xF0 within {self.timeout_s:g} s",
                "is the meter on, paired and in range?",
            )
        if len(head) == 2 and received >= RECORD_LEN:
            model_id = struct.unpack_from(">H", head, 0)[0]
            if model_id not in MODELS:
                return meter_error(
                    WRONG_MODEL,
                    f"{self.arg}: {received} bytes arrived but no valid UM24C/UM25C/UM34C record"
                    f" (model id 0x{model_id:04x} at the start)",
                    "is this port really an RDTech UM meter?",
                )
        return meter_error(
            GARBAGE,
            f"{self.arg}: only a partial or invalid record arrived ({received} bytes)",
            "a weak Bluetooth link drops bytes; move the meter closer",
        )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(model=self.model, records=self.records, bad_bytes=self.bad_bytes)
        return out
