"""The pyserial seam shared by the serial meters: open a port, map its failures to MeterError.

pyserial is imported when a port is opened, so a host without it can still import the package
(the meter reports ``meter_unsupported`` instead).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from agent.energy.base import GONE, UNSUPPORTED, meter_error
from agent.errors import MeterError

log = logging.getLogger(__name__)


def open_serial(path: str, *, baudrate: int, timeout: float) -> Any:
    """An open ``serial.Serial`` on ``path`` with its input flushed, or MeterError(meter_gone)."""
    try:
        import serial
    except ImportError as exc:
        raise meter_error(
            UNSUPPORTED,
            "pyserial is not installed, so serial meters cannot be read",
            "pip install pyserial",
        ) from exc
    if not os.path.exists(path):
        raise meter_error(
            GONE,
            f"serial port {path} does not exist (meter unplugged or not bound)",
            "plug the meter in; for Bluetooth run 'rfcomm bind' (see docs/energy.md)",
        )
    try:
        port = serial.Serial(path, baudrate=baudrate, timeout=timeout, write_timeout=timeout)
        port.reset_input_buffer()
    except (serial.SerialException, OSError, ValueError) as exc:
        raise meter_error(
            GONE,
            f"cannot open serial port {path}: {exc}",
            "check the device exists and that this user is in the 'dialout' group",
        ) from exc
    log.info("opened serial meter port %s at %d baud", path, baudrate)
    return port


def io_error(path: str, exc: BaseException) -> MeterError:
    """A read/write failure on an open port: the device went away."""
    return meter_error(GONE, f"serial port {path} failed: {exc}", "the meter was unplugged?")


def close_quietly(port: Any) -> None:
    if port is None:
        return
    try:
        port.close()
    except Exception as exc:  # closing a port whose device vanished may raise anything
        log.debug("closing serial port failed: %s", exc)
