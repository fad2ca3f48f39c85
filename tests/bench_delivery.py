"""Delivery and serving benchmark for issue 3 (not collected by pytest).

    /work/venv/bin/python tests/bench_delivery.py [--rounds 3] [--idle-seconds 20] [--json OUT]
    /work/venv/bin/python tests/bench_delivery.py --windows 1024,2048,8192 [--rounds 8]

Everything runs in one process tree against one Mosquitto on 127.0.0.1, in the same run:

(a) install throughput of a ~14 MB model (MobileNet v2 fp32 when TensorFlow can make it, else a
    synthetic 14 MB flatbuffer-shaped blob) pushed to a real agent: bytes / (install_accepted ->
    install_verified, both device timestamps), against raw paho pub->sub throughput of the same
    bytes in 64 KiB QoS 1 messages through the same broker, publisher and subscriber in two
    processes as host and agent are (goal: ratio >= 0.6); and against the same raw transfer
    whose subscriber also does the minimal install work (sha256 per message and of the whole,
    pwrite, fsync), which separates the cost of integrity and durability from the protocol's;
(b) push-to-serving time (push start -> committed) for digits and the 14 MB model;
(c) MQTT request/response inference overhead vs a bare invoke() on the same model (digits
    int8): round-trip median minus bare-invoke median (goal <= 1.5 ms);
(d) agent idle RSS with the runtime loaded and no model (goal <= 50 MB), and idle CPU % over
    ``--idle-seconds`` (goal <= 0.5 %), with the default 10 s telemetry interval.

``--windows KB,KB,...`` instead compares transfer windows (agent ``[limits]
transfer_window_kb``) in one run: one agent per window on the same broker, each round a raw
transfer then one push to every agent (the order alternating), medians per window.

Prints a table, the command and the machine; docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.runtime import get_backend
from agent.runtime.inputs import random_inputs
from deploy.keys import init_keys, load_private
from deploy.mqtt import BrokerAddress
from deploy.push import PushResult, push_model
from tests.agent_proc import AgentProcess, Observer
from tests.broker import Broker
from tests.modelzoo import model

CHUNK = 64 * 1024
TOPIC = "bench/raw"


# ---- (a) raw paho pub -> sub ------------------------------------------------------------------
# The subscriber is a process of its own, as the agent is: with publisher and subscriber in one
# Python process they share a GIL, which measured ~1.5x slower than this (8 interleaved rounds:
# median 228 vs 336 MB/s) and would flatter the ratio.


def _raw_subscriber(port: int, count: int, hashes_file: str | None) -> int:
    """The subscriber process. Prints ``ready`` once subscribed and ``done`` after ``count``
    messages. With ``hashes_file`` (count x 32 bytes of sha256, then the whole file's) it also
    does what any verified, durable install must, and nothing else: each message's sha256
    checked, pwrite, the whole-file sha256 in order, one fsync; on a worker thread behind a
    queue, as the agent's core thread does."""
    hashes: list[bytes] = []
    whole_expected = b""
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    finished = threading.Event()
    got = [0]
    errors: list[str] = []
    if hashes_file:
        raw = Path(hashes_file).read_bytes()
        hashes = [raw[i : i + 32] for i in range(0, 32 * count, 32)]
        whole_expected = raw[32 * count :]

        def work() -> None:
            fd = os.open(hashes_file + ".part", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            whole, offset = hashlib.sha256(), 0
            for i, expected in enumerate(hashes):
                piece = inbox.get()
                if hashlib.sha256(piece).digest() != expected:
                    errors.append(f"message {i} does not match its hash")
                os.pwrite(fd, piece, offset)
                whole.update(piece)
                offset += len(piece)
            os.fsync(fd)
            os.close(fd)
            if whole.digest() != whole_expected:
                errors.append("the assembled bytes do not match")
            finished.set()

        threading.Thread(target=work, daemon=True).start()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got[0] += 1
        if hashes:
            inbox.put(bytes(msg.payload))  # bytes already: no copy
        elif got[0] == count:
            finished.set()

    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-sub-{uuid.uuid4().hex[:6]}",
                      protocol=mqtt.MQTTv5)  # fmt: skip
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(TOPIC, qos=1)
    if not subscribed.wait(10):
        print("error: no SUBACK", flush=True)
        return 1
    print("ready", flush=True)
    if not finished.wait(120) or errors:
        print(f"error: {errors or f'{got[0]}/{count} messages'}", flush=True)
        return 1
    print("done", flush=True)
    sub.loop_stop()
    sub.disconnect()
    return 0


def raw_throughput(
    broker: Broker, data: bytes, chunk: int = CHUNK, work_dir: Path | None = None
) -> float:
    """MB/s of ``data`` in ``chunk``-byte QoS 1 messages from this process to a subscriber
    process: first publish -> its last message received. With ``work_dir``: first publish ->
    the subscriber has also done the minimal install work (see :func:`_raw_subscriber`)."""
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    cmd = [sys.executable, __file__, "--raw-sub", str(broker.port), str(len(pieces))]
    if work_dir is not None:
        hashes = work_dir / "raw-hashes.bin"
        digests = [hashlib.sha256(p).digest() for p in pieces]
        hashes.write_bytes(b"".join(digests) + hashlib.sha256(data).digest())
        cmd.append(str(hashes))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if (line := proc.stdout.readline().strip()) != "ready":
            raise RuntimeError(f"raw subscriber: {line or 'exited'}")
        pub_id = f"raw-pub-{uuid.uuid4().hex[:6]}"
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=pub_id, protocol=mqtt.MQTTv5)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        time.sleep(0.2)  # connected (setup, outside the timed part)
        t0 = time.perf_counter()
        for p in pieces:
            pub.publish(TOPIC, p, qos=1)
        line = proc.stdout.readline().strip()
        seconds = time.perf_counter() - t0
        pub.loop_stop()
        pub.disconnect()
        if line != "done":
            raise RuntimeError(f"raw subscriber: {line or 'exited'}")
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return len(data) / seconds / 1e6


# ---- (a), (b) pushes --------------------------------------------------------------------------
def big_model(workdir: Path) -> tuple[Path, str]:
    try:
        from tests.modelzoo import mobilenet_v2

        return mobilenet_v2("fp32"), "MobileNet v2 fp32"
    except BaseException:  # pytest.skip (no TensorFlow) is a BaseException
        path = workdir / "synthetic14mb.tflite"
        path.write_bytes(b"\x1c\x00\x00\x00TFL3" + os.urandom(14 * 10**6 - 8))
        return path, "synthetic 14 MB blob (not loadable: transfer only)"


def push(
    broker: Broker, keys: Path, path: Path, release: int, chunk: int = CHUNK,
    device: str = "pi-01",
) -> tuple[PushResult, float]:  # fmt: skip
    t0 = time.time()
    result = push_model(
        path, device, BrokerAddress(broker.host, broker.port), load_private(keys),
        name=path.stem.replace("_", "-")[:60], version="1", release=release,
        gates={"min_inferences": 20, "min_seconds": 0.5}, progress=None, timeout_s=300,
        chunk_size=chunk,
    )  # fmt: skip
    return result, t0


def event_ts(result: PushResult, kind: str) -> float | None:
    for e in result.events:
        if e["kind"] == kind:
            return float(e["ts"])
    return None


# ---- (c) request/response overhead ------------------------------------------------------------
def bare_invoke_ms(path: Path, n: int) -> list[float]:
    interp = get_backend().module.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    d = interp.get_input_details()
    for detail, value in zip(d, random_inputs(d, np.random.default_rng(0)), strict=True):
        interp.set_tensor(detail["index"], value)
    for _ in range(20):
        interp.invoke()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        interp.invoke()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def _request_payload(npy: bool) -> tuple[bytes, str]:
    from tests.modelzoo import digits_data

    x, _ = digits_data()
    if npy:
        import io

        buf = io.BytesIO()
        np.save(buf, x[0:1], allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    return json.dumps({"inputs": [x[0].tolist()]}).encode(), "application/json"


def mqtt_round_trips(
    broker: Broker, n: int, *, npy: bool, qos: int
) -> tuple[list[float], list[float]]:
    """n sequential requests through edgeloop's own client (agent.mqtt.transport, as the host uses):
    (round-trip ms, device-reported invoke ms)."""
    payload, ctype = _request_payload(npy)
    reply_topic = f"bench/replies/{uuid.uuid4().hex[:6]}"
    rtts, invokes = [], []
    with Observer(broker, [reply_topic]) as obs:
        for i in range(n + 20):
            corr = f"r{i}".encode()
            t0 = time.perf_counter()
            obs.transport.publish(
                "edgeloop/dev/pi-01/infer", payload, qos=qos, response_topic=reply_topic,
                correlation_data=corr, content_type=ctype,
            )  # fmt: skip
            msg = obs.wait_message(lambda m, c=corr: m.correlation_data == c, 10, "reply")  # type: ignore[misc]
            rtt = (time.perf_counter() - t0) * 1e3
            assert msg is not None
            invoke = float("nan")
            if not npy:
                body = json.loads(msg.payload)
                assert body["ok"], body
                invoke = float(body["latency_ms"])
            obs.messages.clear()
            if i >= 20:  # warm-up
                rtts.append(rtt)
                invokes.append(invoke)
    return rtts, invokes


def plain_paho_round_trips(broker: Broker, n: int, qos: int) -> list[float]:
    """The same with a plain paho client (a third-party app: no TCP_NODELAY/QUICKACK)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    payload, ctype = _request_payload(False)
    reply_topic = f"bench/paho-replies/{uuid.uuid4().hex[:6]}"
    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda *_a: got.set()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(reply_topic, qos=1)
    subscribed.wait(10)
    rtts = []
    for i in range(n + 20):
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic, props.CorrelationData, props.ContentType = reply_topic, b"x", ctype
        got.clear()
        t0 = time.perf_counter()
        client.publish("edgeloop/dev/pi-01/infer", payload, qos=qos, properties=props)
        if not got.wait(10):
            raise RuntimeError("no reply")
        if i >= 20:
            rtts.append((time.perf_counter() - t0) * 1e3)
    client.loop_stop()
    client.disconnect()
    return rtts


# ---- (d) idle footprint -----------------------------------------------------------------------
def idle_footprint(agent: AgentProcess, seconds: float) -> dict[str, float]:
    proc = psutil.Process(agent.pid)
    time.sleep(3.0)  # let start-up settle (imports, first telemetry)
    c0, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = proc.cpu_times(), time.monotonic()
    cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0) * 100
    mem = proc.memory_full_info()
    return {"rss_mb": mem.rss / 2**20, "uss_mb": mem.uss / 2**20, "cpu_pct": cpu,
            "threads": proc.num_threads(), "seconds": t1 - t0}  # fmt: skip


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def compare_windows(windows: list[int], rounds: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-windows-"))
    broker = Broker(work / "broker", persistence=False).start()
    keys = work / "keys"
    init_keys(keys)
    release = iter(range(1, 10**6))
    agents: list[AgentProcess] = []
    try:
        for kb in windows:
            cfg = work / f"window-{kb}.toml"
            cfg.write_text(f"[limits]\ntransfer_window_kb = {kb}\n")
            agents.append(AgentProcess(
                broker, work / f"state-{kb}", keys / "edgeloop.pub", device_id=f"win-{kb}",
                telemetry_interval=10.0, extra_args=["--config", str(cfg)],
            ).start())  # fmt: skip
        big, big_name = big_model(work)
        data = big.read_bytes()
        raws: list[float] = []
        installs: dict[int, list[float]] = {kb: [] for kb in windows}
        for r in range(rounds):
            raws.append(raw_throughput(broker, data))
            for kb in windows if r % 2 == 0 else windows[::-1]:
                data = data + os.urandom(8)  # a new model each push (trailing bytes ignored)
                big = work / f"big-{r}-{kb}.tflite"
                big.write_bytes(data)
                result, _t0 = push(broker, keys, big, next(release), device=f"win-{kb}")
                accepted = event_ts(result, "install_accepted")
                verified = event_ts(result, "install_verified")
                if accepted is None or verified is None:
                    raise RuntimeError(f"no accepted/verified events: {result.to_dict()}")
                installs[kb].append(len(data) / (verified - accepted) / 1e6)
        raw = median(raws)
        print(f"{big_name}, {rounds} rounds; raw paho pub->sub 64 KiB QoS 1: median {raw:.0f} "
              f"MB/s ({' / '.join(f'{v:.0f}' for v in raws)})")  # fmt: skip
        for kb in windows:
            m = median(installs[kb])
            print(f"window {kb:6d} KiB: install median {m:.0f} MB/s, / raw {m / raw:.2f} "
                  f"({' / '.join(f'{v:.0f}' for v in installs[kb])})")  # fmt: skip
    finally:
        for a in agents:
            a.stop()
        broker.stop(check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncommand: {' '.join([Path(sys.executable).as_posix(), *sys.argv])}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-sub":  # the raw baseline's subscriber
        hashes_file = sys.argv[4] if len(sys.argv) > 4 else None
        return _raw_subscriber(int(sys.argv[2]), int(sys.argv[3]), hashes_file)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="raw and install rounds, alternating")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--windows", default=None, help="compare transfer windows (KiB, comma list)")
    args = ap.parse_args()
    if args.windows:
        return compare_windows([int(k) for k in args.windows.split(",")], args.rounds)
    out: dict[str, Any] = {
        "runtime": {"name": get_backend().name, "version": get_backend().version}
    }
    work = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    broker = Broker(work / "broker", persistence=False).start()
    init_keys(work / "keys")
    keys = work / "keys"
    release = iter(range(1, 10**6))
    try:
        # (d) first: a fresh agent, runtime imported, no model, default 10 s telemetry
        idle = AgentProcess(broker, work / "idle-state", keys / "edgeloop.pub",
                            device_id="idle-01", telemetry_interval=10.0).start()  # fmt: skip
        out["idle"] = idle_footprint(idle, args.idle_seconds)
        idle.stop()

        agent = AgentProcess(broker, work / "state", keys / "edgeloop.pub",
                             telemetry_interval=10.0).start()  # fmt: skip
        big, big_name = big_model(work)
        data = big.read_bytes()
        out["big_model"] = {"name": big_name, "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
        raws, minimal, installs, serve_big = [], [], [], []
        split: list[tuple[float, float, float]] = []  # head, transfer, tail (ms)
        for _ in range(args.rounds):
            raws.append(raw_throughput(broker, data))
            minimal.append(raw_throughput(broker, data, work_dir=work))
            result, t0 = push(broker, keys, big, next(release))
            accepted, verified = (
                event_ts(result, "install_accepted"),
                event_ts(result, "install_verified"),
            )
            if accepted is None or verified is None:
                raise RuntimeError(f"no accepted/verified events: {result.to_dict()}")
            installs.append(len(data) / (verified - accepted) / 1e6)
            d = next(e["data"] for e in result.events if e["kind"] == "install_verified")
            split.append((1e3 * d["first_chunk_s"], 1e3 * (d["transfer_s"] - d["first_chunk_s"]),
                          1e3 * (d["seconds"] - d["transfer_s"])))  # fmt: skip
            if result.ok:  # the "committed" reply: the new model serves from now on
                serve_big.append(time.time() - t0)
            # the next round must transfer again: a different byte string, same size
            data = data + os.urandom(8)  # trailing bytes after the flatbuffer are ignored
            big = work / f"big-{len(raws)}.tflite"
            big.write_bytes(data)
        out["raw_mb_s"] = raws
        out["raw_minimal_install_mb_s"] = minimal
        out["install_mb_s"] = installs
        out["install_split_ms"] = split
        out["throughput_ratio"] = median(installs) / median(raws)
        out["throughput_ratio_minimal"] = median(installs) / median(minimal)
        out["push_to_serving_big_s"] = serve_big

        digits_serve = []
        for _ in range(args.rounds):
            result, t0 = push(broker, keys, model("digits_int8"), next(release))
            if result.ok:
                digits_serve.append(time.time() - t0)
        out["push_to_serving_digits_s"] = digits_serve

        # (c) request/response overhead on digits int8 (the model now served)
        bare = bare_invoke_ms(model("digits_int8"), args.requests)
        out["bare_invoke_ms_p50"] = median(bare)
        rr: dict[str, float] = {}
        for qos in (1, 0):
            rtt, inv = mqtt_round_trips(broker, args.requests, npy=False, qos=qos)
            rr[f"json_qos{qos}"] = median(rtt)
            rr[f"device_invoke_qos{qos}"] = median(inv)
        rr["npy_qos1"] = median(mqtt_round_trips(broker, args.requests, npy=True, qos=1)[0])
        rr["plain_paho_qos1"] = median(plain_paho_round_trips(broker, args.requests, 1))
        out["rtt_ms_p50"] = rr
        out["overhead_ms_p50"] = {k: v - median(bare) for k, v in rr.items() if "invoke" not in k}
        agent.stop()
    finally:
        broker.stop(check=False)
        shutil.rmtree(work, ignore_errors=True)

    rtt, ovh, split = out["rtt_ms_p50"], out["overhead_ms_p50"], out["install_split_ms"]
    lines = [
        ("raw paho pub->sub, 64 KiB QoS 1 (MB/s)",
         " / ".join(f"{v:.1f}" for v in out["raw_mb_s"])),
        ("raw + minimal install work in the subscriber (MB/s)",
         " / ".join(f"{v:.1f}" for v in out["raw_minimal_install_mb_s"])),
        ("install accepted->verified (MB/s)", " / ".join(f"{v:.1f}" for v in out["install_mb_s"])),
        ("install: first chunk / chunks / checks (ms, median)",
         " / ".join(f"{median([s[i] for s in split]):.1f}" for i in range(3))),
        ("install / raw (median; goal >= 0.6)", f"{out['throughput_ratio']:.2f}"),
        ("install / raw + minimal install work (median)",
         f"{out['throughput_ratio_minimal']:.2f}"),
        (f"push->committed {out['big_model']['name']} (s)",
         " / ".join(f"{v:.2f}" for v in out["push_to_serving_big_s"]) or "n/a"),
        ("push->committed digits int8 (s)",
         " / ".join(f"{v:.2f}" for v in out["push_to_serving_digits_s"])),
        ("bare invoke p50, digits int8 (ms)", f"{out['bare_invoke_ms_p50']:.3f}"),
        ("round trip p50 JSON QoS1 / QoS0 / .npy QoS1 (ms)",
         f"{rtt['json_qos1']:.3f} / {rtt['json_qos0']:.3f} / {rtt['npy_qos1']:.3f}"),
        ("overhead p50 JSON QoS1 (goal <= 1.5 ms)", f"{ovh['json_qos1']:.3f}"),
        ("round trip p50, plain paho requester QoS1 (ms)", f"{rtt['plain_paho_qos1']:.3f}"),
        ("idle RSS / USS (MB; goal RSS <= 50)",
         f"{out['idle']['rss_mb']:.1f} / {out['idle']['uss_mb']:.1f}"),
        (f"idle CPU over {out['idle']['seconds']:.0f}s (%; goal <= 0.5)",
         f"{out['idle']['cpu_pct']:.2f}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    print(f"\ncommand: {' '.join([Path(sys.executable).as_posix(), *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"runtime {out['runtime']['name']} {out['runtime']['version']}, "
          f"load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
