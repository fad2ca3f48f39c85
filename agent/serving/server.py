"""Serving: one worker thread owns the interpreter and runs every inference.

TFLite interpreters are not thread-safe, so requests (from MQTT, from the built-in load
generator, from the trial gate) are queued to a single worker. Each inference is timed around
``invoke()`` only and recorded in a :class:`LatencyWindow` that telemetry and the health gates
read. Replies go back through a callback the caller supplies (it publishes over MQTT).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import EdgeloopError
from agent.runtime.inputs import random_inputs
from agent.wire.codec import depth_ok

log = logging.getLogger(__name__)

#: Test hook (P13 watchdog tests): ``EDGELOOP_HANG_AT=inference:N`` blocks the inference worker
#: forever just before the job that follows N successful inferences, as a wedged driver would.
HANG_ENV = "EDGELOOP_HANG_AT"
_HANG_AT = os.environ.get(HANG_ENV) or None

NPY_CONTENT_TYPE = "application/x-npy"
JSON_CONTENT_TYPE = "application/json"


class InferenceInputError(EdgeloopError):
    """An inference request whose payload does not fit the model's inputs."""

    code = "bad_request"


@dataclass
class WindowSnapshot:
    """What happened in one window: latencies of successful inferences and failures."""

    latencies_ms: list[float]
    errors: int
    non_finite: int
    started: float
    ended: float

    @property
    def inferences(self) -> int:
        return len(self.latencies_ms)


@dataclass
class LatencyWindow:
    """Thread-safe accumulator of inference outcomes, drained once per telemetry window."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _lat: list[float] = field(default_factory=list)
    _errors: int = 0
    _non_finite: int = 0
    _started: float = field(default_factory=time.monotonic)

    def add(self, latency_ms: float, *, finite: bool = True) -> None:
        with self._lock:
            self._lat.append(latency_ms)
            if not finite:
                self._non_finite += 1

    def error(self) -> None:
        with self._lock:
            self._errors += 1

    def drain(self) -> WindowSnapshot:
        now = time.monotonic()
        with self._lock:
            snap = WindowSnapshot(self._lat, self._errors, self._non_finite, self._started, now)
            self._lat, self._errors, self._non_finite, self._started = [], 0, 0, now
        return snap

    def peek_count(self) -> int:
        with self._lock:
            return len(self._lat)

    def peek(self) -> WindowSnapshot:
        """A copy of what the window holds so far, without draining it."""
        with self._lock:
            return WindowSnapshot(
                list(self._lat), self._errors, self._non_finite, self._started, time.monotonic()
            )


Reply = Callable[[dict[str, Any] | None, bytes | None, str], None]


@dataclass(frozen=True)
class InferenceJob:
    """One request: ``inputs`` None means synthetic inputs (load generator / trial traffic)."""

    inputs: list[npt.NDArray[Any]] | None
    reply: Reply | None = None
    as_npy: bool = False


#: ``{"inputs": [...]}`` around arrays of up to 32 dimensions (numpy 1.x's NPY_MAXDIMS)
MAX_INPUT_DEPTH = 34
_TOO_DEEP = object()


def _may_nest(payload: bytes) -> bool:
    """Whether the payload has enough brackets to nest too deep (counting is C-speed; the
    walk over the parsed value is skipped for the usual small tensors)."""
    return payload.count(b"[") + payload.count(b"{") > MAX_INPUT_DEPTH


def decode_request(payload: bytes, content_type: str | None) -> tuple[list[Any], bool]:
    """Parse an inference request: a ``.npy`` array, or JSON (``{"inputs": [...]}`` or an array).

    Returns (arrays, as_npy). Raises InferenceInputError naming what was wrong.
    """
    if payload[:6] == b"\x93NUMPY" or content_type == NPY_CONTENT_TYPE:
        return [_load_npy(payload)], True
    try:
        doc = json.loads(payload.decode("utf-8"))
    except RecursionError:  # json's C parser gives up near 1000 levels (issue 10)
        doc = _TOO_DEEP
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceInputError(
            f"request is neither .npy nor JSON: {exc}",
            hint='send {"inputs": [array, ...]} or a .npy payload',
        ) from exc
    if doc is _TOO_DEEP or (_may_nest(payload) and not depth_ok(doc, limit=MAX_INPUT_DEPTH)):
        raise InferenceInputError(
            f"JSON request nested deeper than {MAX_INPUT_DEPTH} levels",
            hint='send {"inputs": [array, ...]} with one nested list per array dimension',
        )
    if isinstance(doc, dict):
        if "inputs" not in doc or not isinstance(doc["inputs"], list):
            raise InferenceInputError(
                'JSON request needs "inputs": a list with one array per input'
            )
        return list(doc["inputs"]), False
    if isinstance(doc, list):
        return [doc], False
    raise InferenceInputError("JSON request must be an object or an array")


def _load_npy(payload: bytes) -> npt.NDArray[Any]:
    """np.load, after checking that the header's shape and dtype fit the bytes that follow
    (np.load allocates what the header claims first: 100 bytes could ask for terabytes)."""
    fmt = np.lib.format
    buf = io.BytesIO(payload)
    try:
        version = fmt.read_magic(buf)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(buf)
        else:  # 2.0 and 3.0 differ only in the header's text encoding
            shape, _fortran, dtype = fmt.read_array_header_2_0(buf)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        expected = math.prod(shape) * dtype.itemsize
        if expected != len(payload) - buf.tell():
            raise ValueError(
                f"header says {list(shape)} {dtype} ({expected} bytes), "
                f"{len(payload) - buf.tell()} bytes follow"
            )
        arr: npt.NDArray[Any] = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, SyntaxError) as exc:
        raise InferenceInputError(f"not a valid .npy array: {exc}") from exc
    return arr


def _quantize(values: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[Any]:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale and np.issubdtype(values.dtype, np.floating):
        info = np.iinfo(dtype)
        q = np.round(values / scale) + zero
        out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(dtype)
        return out
    return values.astype(dtype)


def to_model_inputs(raw: Sequence[Any], details: list[dict[str, Any]]) -> list[npt.NDArray[Any]]:
    """Convert request arrays to the model's dtypes (floats are quantized for int models)."""
    if len(raw) != len(details):
        raise InferenceInputError(f"model has {len(details)} input(s), request gave {len(raw)}")
    out: list[npt.NDArray[Any]] = []
    for value, detail in zip(raw, details, strict=True):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InferenceInputError(f"input {detail['name']!r}: not an array: {exc}") from exc
        if (
            arr.dtype == object
            or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_)
            or np.issubdtype(arr.dtype, np.complexfloating)
        ):
            raise InferenceInputError(f"input {detail['name']!r}: expected real numbers")
        want = tuple(int(d) for d in detail["shape"])
        if arr.shape != want:
            if arr.size == int(np.prod(want)):
                arr = arr.reshape(want)
            elif arr.shape == want[1:]:
                arr = arr[np.newaxis, ...]
            else:
                raise InferenceInputError(
                    f"input {detail['name']!r}: shape {list(arr.shape)} does not fit {list(want)}"
                )
        converted = _quantize(arr, detail)
        if np.issubdtype(converted.dtype, np.floating) and not np.isfinite(converted).all():
            # NaN/Inf in means NaN out: the client's fault, not the model's (trial gates)
            raise InferenceInputError(f"input {detail['name']!r}: contains NaN or infinity")
        out.append(converted)
    return out


def dequantize(values: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[Any]:
    scale, zero = detail.get("quantization", (0.0, 0))
    if scale and np.issubdtype(values.dtype, np.integer):
        deq: npt.NDArray[Any] = (values.astype(np.float32) - zero) * np.float32(scale)
        return deq
    return values


class Server:
    """Owns one interpreter; runs jobs on a worker thread; records latencies in ``window``."""

    def __init__(self, interpreter: Any, model_meta: dict[str, Any], *, queue_size: int = 64):
        self.interpreter = interpreter
        self.meta = model_meta
        self.window = LatencyWindow()
        self._observers: list[LatencyWindow] = [self.window]
        self.total = 0
        self._inputs = interpreter.get_input_details()
        self._outputs = interpreter.get_output_details()
        self._jobs: queue.Queue[InferenceJob | None] = queue.Queue(maxsize=queue_size)
        self._rng = np.random.default_rng(0)
        self._synthetic = random_inputs(self._inputs, self._rng)
        self._last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def last_progress(self) -> float:
        """monotonic time the worker last finished a job or idled (watchdog liveness)."""
        return self._last_progress

    def attach(self, window: LatencyWindow) -> None:
        """Also record every outcome in ``window`` (the trial gate's own accumulator)."""
        self._observers.append(window)

    def submit_synthetic(self) -> bool:
        return self.submit(InferenceJob(None))

    def submit(self, job: InferenceJob) -> bool:
        """Queue a job; False when the queue is full (the caller replies 'busy')."""
        try:
            self._jobs.put_nowait(job)
            return True
        except queue.Full:
            return False

    def backlog(self) -> int:
        return self._jobs.qsize()

    def stop(self, timeout: float = 10.0) -> None:
        while True:  # make room for the sentinel
            try:
                self._jobs.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._jobs.get_nowait()
        self._thread.join(timeout)

    def run_once(self, inputs: list[npt.NDArray[Any]]) -> tuple[list[npt.NDArray[Any]], float]:
        """One timed inference (worker thread only). Returns outputs and latency in ms."""
        interp = self.interpreter
        for detail, value in zip(self._inputs, inputs, strict=True):
            interp.set_tensor(detail["index"], value)
        t0 = time.perf_counter_ns()
        interp.invoke()
        latency_ms = (time.perf_counter_ns() - t0) / 1e6
        outputs = [interp.get_tensor(d["index"]) for d in self._outputs]
        return outputs, latency_ms

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self._last_progress = time.monotonic()
                continue
            if job is None:
                return
            if _HANG_AT is not None and f"inference:{self.total}" == _HANG_AT:
                log.warning("%s=%s: the inference worker hangs now", HANG_ENV, _HANG_AT)
                threading.Event().wait()
            self._handle(job)
            self._last_progress = time.monotonic()

    def _handle(self, job: InferenceJob) -> None:
        try:
            inputs = (
                self._synthetic if job.inputs is None else to_model_inputs(job.inputs, self._inputs)
            )
            outputs, latency_ms = self.run_once(inputs)
        except InferenceInputError as exc:
            if job.reply:
                job.reply({"ok": False, **exc.to_dict()}, None, JSON_CONTENT_TYPE)
            return
        except Exception as exc:  # the interpreter failed: count it, the gate will see it
            for w in self._observers:
                w.error()
            log.warning("inference failed: %s", exc)
            if job.reply:
                job.reply(
                    {"ok": False, "code": "inference_failed", "message": str(exc)},
                    None,
                    JSON_CONTENT_TYPE,
                )
            return
        finite = all(
            bool(np.isfinite(o).all()) for o in outputs if np.issubdtype(o.dtype, np.floating)
        )
        for w in self._observers:
            w.add(latency_ms, finite=finite)
        self.total += 1
        if job.reply is None:
            return
        floats = [dequantize(o, d) for o, d in zip(outputs, self._outputs, strict=True)]
        if job.as_npy:
            buf = io.BytesIO()
            np.save(buf, floats[0], allow_pickle=False)
            job.reply({"latency_ms": latency_ms}, buf.getvalue(), NPY_CONTENT_TYPE)
        else:
            job.reply(
                {
                    "ok": True,
                    "outputs": [f.tolist() for f in floats],
                    "latency_ms": latency_ms,
                    "model": {k: self.meta.get(k) for k in ("sha256", "name", "version")},
                },
                None,
                JSON_CONTENT_TYPE,
            )


class LoadGenerator:
    """Feeds synthetic inferences to a server at a fixed rate (0 = off)."""

    def __init__(self, get_server: Callable[[], Server | None], rate_hz: float = 0.0) -> None:
        self._get_server = get_server
        self._rate = rate_hz
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self._thread.start()

    @property
    def rate_hz(self) -> float:
        return self._rate

    def set_rate(self, rate_hz: float) -> None:
        self._rate = max(0.0, float(rate_hz))
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            rate = self._rate
            if rate <= 0:
                self._wake.wait(1.0)
                self._wake.clear()
                next_t = time.monotonic()
                continue
            server = self._get_server()
            if server is not None and server.backlog() < 2:
                server.submit(InferenceJob(None))
            next_t += 1.0 / rate
            delay = next_t - time.monotonic()
            if delay < -1.0:  # fell far behind: do not burst to catch up
                next_t = time.monotonic()
            elif delay > 0:
                self._wake.wait(delay)
                self._wake.clear()
