"""Sending one command to a device and waiting for its reply (``edge-deploy command``).

Commands that change what a device runs or how it behaves (rollback, config, bench, and a
deploy carrying gates or a delegate) are signed
(agent/wire/signed.py) with the host's key, addressed to the device, and numbered with
``seq`` = the current time in milliseconds, so a host needs no counter file of its own and a
later command always numbers above an earlier one. ``state`` and ``rebirth`` go unsigned.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Mapping
from typing import Any

from agent.errors import EdgeloopError
from agent.mqtt.types import IncomingMessage
from agent.wire.messages import Command, CommandReply
from agent.wire.signed import needs_signature, sign_command
from agent.wire.topics import Topics
from deploy.mqtt import BrokerAddress, connect, new_client_id


def build_command(
    verb: str,
    device_id: str,
    args: Mapping[str, Any],
    private_key: Any | None,
    *,
    now: float | None = None,
) -> Command:
    ts = time.time() if now is None else now
    cmd_id = uuid.uuid4().hex
    auth = None
    if needs_signature(verb, args):
        if private_key is None:
            raise EdgeloopError(
                f"cmd/{verb} must be signed", hint="pass --keys DIR (or [keys] in --host-config)"
            )
        seq = int(ts * 1000)
        auth = sign_command(private_key, verb, cmd_id, args, ts, seq, {"device": device_id})
    return Command(verb, cmd_id, dict(args), ts, auth)


def send_command(
    broker: BrokerAddress,
    device_id: str,
    cmd: Command,
    *,
    prefix: str = "edgeloop",
    timeout_s: float = 30.0,
    final: bool = False,
) -> CommandReply:
    """Publish ``cmd`` (QoS 1, 5-minute expiry) and return the device's reply; with ``final``
    the reply after ``accepted`` (a bench's result), within the same ``timeout_s``."""
    topics = Topics(prefix, device_id)
    client_id = new_client_id("cmd")
    reply_topic = topics.reply(client_id)
    inbox: queue.Queue[IncomingMessage] = queue.Queue()
    transport = broker.client("cmd", [reply_topic], inbox.put, client_id=client_id)
    connect(transport, hint="check --broker HOST:PORT and that the broker runs")
    try:
        correlation = cmd.id.encode()
        transport.publish(
            topics.cmd(cmd.verb),
            cmd.to_json(),
            response_topic=reply_topic,
            correlation_data=correlation,
            message_expiry_interval=300,
        )
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if msg.correlation_data == correlation:
                reply = CommandReply.from_json(msg.payload)
                if not (final and reply.status == "accepted"):
                    return reply
        raise EdgeloopError(
            f"{device_id} did not answer cmd/{cmd.verb} within {timeout_s:.0f} s",
            hint="is the device online (edge-deploy fleet)?",
            code="timeout",
        )
    finally:
        transport.stop(final=None)
