"""A small device-like client run as a real subprocess by the transport tests.

It connects with agent.mqtt.transport (will + retained birth), optionally appends ``--count``
numbered records to a disk outbox drained to ``{prefix}/telemetry``, prints progress lines on
stdout (``CONNECTED``, ``APPENDED <seq>``, ``STOPPED``) and stops cleanly on SIGTERM.

    python -m tests.mqtt_client_proc --port P --client-id dev1 [--outbox FILE --count N]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from agent.mqtt.outbox import Outbox, OutboxDrainer
from agent.mqtt.transport import Transport, TransportConfig, WillConfig


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def record_payload(i: int, boot: str) -> Callable[[int], bytes]:
    def build(seq: int) -> bytes:
        return json.dumps({"seq": seq, "i": i, "boot": boot}).encode()

    return build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--keepalive", type=int, default=2)
    ap.add_argument("--outbox")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    prefix = f"edgeloop/dev/{args.client_id}"
    boot = f"{time.time():.3f}"
    config = TransportConfig(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        keepalive=args.keepalive,
        will=WillConfig(f"{prefix}/state"),
        birth=lambda: (f"{prefix}/state", json.dumps({"online": True, "boot": boot}).encode()),
        subscriptions=[(f"{prefix}/cmd/#", 1)],
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )
    transport = Transport(
        config, lambda _m: None, lambda up: say("CONNECTED" if up else "DISCONNECTED")
    )
    done = threading.Event()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_term)
    transport.start()
    outbox = drainer = None
    if args.outbox:
        outbox = Outbox(args.outbox)
        drainer = OutboxDrainer(outbox, transport, window=args.window)
        drainer.start()
        for i in range(args.count):
            if done.is_set():
                break
            seq = outbox.append(f"{prefix}/telemetry", record_payload(i, boot))
            say(f"APPENDED {seq}")
            done.wait(args.interval)
        say("ALL_APPENDED")
    done.wait()
    if drainer is not None:
        drainer.stop()
    transport.stop()
    if outbox is not None:
        outbox.close()
    say("STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
