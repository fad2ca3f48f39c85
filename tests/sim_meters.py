"""Simulated energy meters on pseudo-terminals, speaking the real protocols.

- :class:`PowerProfile`: a step function of ``time.monotonic()`` (the test switches it between idle
  and load levels in step with inference) with an exact integral: the truth to compare against.
- :class:`SimUM25C`: answers each ``0xF0`` with a 130-byte RDTech UM record (encoded here from
  the sigrok-documented layout, independently of ``agent.energy.um25c``), voltage constant,
  current = P / V. Fault modes: ``silent``, ``garbage``, ``partial``, ``wrong_model``; ``unplug()``
  closes the pty and deletes the symlink, ``replug()`` makes a new one.
- :class:`SimLineMeter`: an INA219-style bridge printing CSV or JSON lines at a fixed rate.

The meter under test opens ``sim.path``, a symlink to the current pty slave (like a udev
``/dev/serial/by-id`` link or ``/dev/rfcomm0``).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import os
import random
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

UM_IDS = {"UM24C": 0x0963, "UM25C": 0x09C9, "UM34C": 0x0D4C}
# volts per count, amps per count (UM25C reports 1 mV / 0.1 mA; the others 10 mV / 1 mA)
UM_SCALE = {"UM24C": (0.01, 0.001), "UM25C": (0.001, 0.0001), "UM34C": (0.01, 0.001)}
UM34C_XOR_POSITIONS = (1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67,
                       69, 73, 79, 83, 89, 97, 99, 109, 111, 113, 119, 121, 127)  # fmt: skip


class PowerProfile:
    """Thread-safe step function of monotonic time, in watts."""

    def __init__(self, watts: float) -> None:
        self._lock = threading.Lock()
        self._t = [float("-inf")]
        self._w = [float(watts)]

    def set(self, watts: float) -> float:
        """Switch to ``watts`` now; returns the switch time."""
        with self._lock:
            now = time.monotonic()
            self._t.append(now)
            self._w.append(float(watts))
            return now

    def value(self, t: float | None = None) -> float:
        t = time.monotonic() if t is None else t
        with self._lock:
            return self._w[bisect.bisect_right(self._t, t) - 1]

    def integral(self, t0: float, t1: float) -> float:
        """Exact joules over [t0, t1]."""
        with self._lock:
            times, watts = list(self._t), list(self._w)
        total = 0.0
        for k, w in enumerate(watts):
            start = max(times[k], t0)
            end = min(times[k + 1] if k + 1 < len(times) else t1, t1)
            if end > start:
                total += w * (end - start)
        return total


def burst_workload(
    profile: PowerProfile,
    infer: Callable[[], object],
    *,
    idle_w: float,
    load_w: float,
    bursts: int,
    burst_s: float,
    gap_s: float,
) -> tuple[float, float, int]:
    """Bursts of inferences with the profile at ``load_w``, idle gaps at ``idle_w`` between.

    Returns (t0, t1, n): the monotonic start of the first burst, the end of the last, and the
    number of inferences run in between."""
    n = 0
    t0 = t1 = 0.0
    for b in range(bursts):
        start = profile.set(load_w)
        t0 = start if b == 0 else t0
        while time.monotonic() < start + burst_s:
            infer()
            n += 1
        t1 = profile.set(idle_w)
        if b < bursts - 1:
            gap_end = t1 + gap_s
            while time.monotonic() < gap_end:  # the device sits idle between bursts
                time.sleep(0.01)
    return t0, t1, n


def um_record(
    model: str,
    volts: float,
    amps: float,
    *,
    temp_c: int = 27,
    group: int = 0,
    model_id: int | None = None,
) -> bytes:
    """A 130-byte UM24C/UM25C/UM34C answer, per the sigrok wiki layout."""
    v_unit, a_unit = UM_SCALE[model]
    rec = bytearray(130)
    struct.pack_into(">H", rec, 0, UM_IDS[model] if model_id is None else model_id)
    struct.pack_into(">HH", rec, 2, round(volts / v_unit), round(amps / a_unit))
    struct.pack_into(">I", rec, 6, round(volts * amps * 1000))
    struct.pack_into(">HHH", rec, 10, temp_c, round(temp_c * 9 / 5 + 32), group)
    for g in range(10):
        struct.pack_into(">II", rec, 16 + 8 * g, 100 * g, 510 * g)  # mAh, mWh per data group
    struct.pack_into(">HHH", rec, 96, 60, 62, 1)  # D+ 0.60 V, D- 0.62 V, charging mode
    struct.pack_into(">I", rec, 122, round(volts / amps * 10) if amps > 0 else 99999)
    if model == "UM34C":
        x = 0
        for pos in UM34C_XOR_POSITIONS:
            x ^= rec[pos]
        rec[129] = x
    else:
        rec[128:130] = b"\xff\xf1"
    return bytes(rec)


class _PtyDevice:
    """A pty whose slave is reachable through a stable symlink; the base of both simulators."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.plugged = False

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF mangling of binary records
        os.set_blocking(master, False)
        self.master, self._slave = master, slave
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)
        self.plugged = True

    def unplug(self) -> None:
        """Like pulling the cable: the device node disappears and open handles get EIO."""
        self.plugged = False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for fd in (self.master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self._slave = None

    def replug(self) -> None:
        self.unplug()
        self._plug()

    def start(self) -> _PtyDevice:
        self._plug()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=type(self).__name__)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.unplug()

    def __enter__(self) -> _PtyDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write(self, data: bytes) -> None:
        fd = self.master
        if fd is None:
            return
        try:
            os.write(fd, data)
        except OSError as exc:  # EAGAIN: nobody reads and the buffer is full; EIO/EBADF: unplugged
            if exc.errno not in (errno.EAGAIN, errno.EIO, errno.EBADF):
                raise

    def _loop(self) -> None:
        raise NotImplementedError


class SimUM25C(_PtyDevice):
    """A UM meter: ``mode`` is ok | silent | garbage | partial | wrong_model."""

    def __init__(
        self,
        path: Path,
        profile: PowerProfile,
        *,
        model: str = "UM25C",
        volts: float = 5.1,
        refresh_hz: float | None = None,
        seed: int = 1,
    ) -> None:
        super().__init__(path)
        self.profile = profile
        self.model = model
        self.volts = volts
        self.refresh_hz = refresh_hz  # the real meter updates its readings ~2x a second
        self.mode = "ok"
        self.requests = 0
        self._rng = random.Random(seed)

    def record_now(self) -> bytes:
        t = time.monotonic()
        if self.refresh_hz:
            t = int(t * self.refresh_hz) / self.refresh_hz
        watts = self.profile.value(t)
        return um_record(
            self.model,
            self.volts,
            watts / self.volts,
            model_id=0x1234 if self.mode == "wrong_model" else None,
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            fd = self.master
            if fd is None:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                data = os.read(fd, 256) if ready else b""
            except OSError:
                time.sleep(0.01)  # unplugged under us
                continue
            for byte in data:
                if byte == 0xF0:
                    self.requests += 1
                    self._answer()

    def _answer(self) -> None:
        if self.mode == "silent":
            return
        record = self.record_now()
        if self.mode == "garbage":
            noise = bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 60)))
            self._write(noise + record)
        elif self.mode == "partial":
            self._write(record[: self._rng.randrange(10, 120)])
        else:
            self._write(record)


class SimLineMeter(_PtyDevice):
    """An INA219 bridge printing ``fmt`` lines at ``rate_hz``; ``mode`` ok | silent | garbage."""

    def __init__(
        self,
        path: Path,
        profile: PowerProfile,
        *,
        fmt: str = "csv",
        rate_hz: float = 20.0,
        volts: float = 5.0,
        line: Callable[[float, float, float], str] | None = None,
        seed: int = 2,
    ) -> None:
        super().__init__(path)
        self.profile = profile
        self.fmt = fmt
        self.rate_hz = rate_hz
        self.volts = volts
        self.line = line
        self.mode = "ok"
        self.lines = 0
        self._rng = random.Random(seed)

    def format_line(self, t_ms: float, volts: float, amps: float) -> str:
        if self.line is not None:
            return self.line(t_ms, volts, amps)
        if self.fmt == "json":
            return json.dumps({"v": round(volts, 4), "i": round(amps, 5)})
        return f"{t_ms:.0f},{volts * 1000:.2f},{amps * 1000:.3f}"  # ms,mV,mA

    def _loop(self) -> None:
        start = time.monotonic()
        period = 1.0 / self.rate_hz
        k = 0
        while not self._stop.is_set():
            k += 1
            self._stop.wait(max(0.0, start + k * period - time.monotonic()))
            if self.mode == "silent" or self.master is None:
                continue
            now = time.monotonic()
            amps = self.profile.value(now) / self.volts
            text = self.format_line((now - start) * 1000, self.volts, amps)
            if self.mode == "garbage" and self._rng.random() < 0.3:
                self._write(b"INA219 not found, retrying\r\n" + bytes([0xFF, 0x00, 0x3A]))
            self._write(text.encode() + b"\r\n")
            self.lines += 1
