"""A locked-down fleet, end to end: the generated PKI and broker config on a real Mosquitto.

The fixture runs the product's own commands (``edge-deploy keys init``, ``pki init``,
``provision`` for d1, d2, d3 and a host, ``pki revoke d3``, ``broker-config``) and starts
``mosquitto -c`` on the generated file as it is. The real agent runs from its generated
``agent.toml``; the host side is ``edge-deploy push --host-config`` and TLS clients made from
the provisioned files. Then d2's credentials attack d1.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.mqtt.transport import Transport
from agent.mqtt.types import NOT_AUTHORIZED, IncomingMessage, TlsConfig, TransportConfig
from agent.wire.chunks import encode_chunk
from agent.wire.topics import Topics, model_stream_topic
from deploy.cli.main import main as deploy_main
from deploy.hostconfig import load_host_config
from tests.agent_proc import REPO, wait_for
from tests.broker import MOSQUITTO, free_port, wait_port
from tests.modelzoo import digits_data, model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]


@dataclass
class Fleet:
    root: Path
    device_port: int
    host_port: int
    log: Path
    host_config: Path
    proc: subprocess.Popen[bytes]

    def device_dir(self, device_id: str) -> Path:
        return self.root / device_id

    def tls(self, name: str) -> TlsConfig:
        d = self.root / name
        return TlsConfig(str(d / "ca.crt"), str(d / f"{name}.crt"), str(d / f"{name}.key"))


def run(argv: list[str]) -> None:
    assert deploy_main(argv) == 0, argv


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    pki = str(root / "pki")
    dport, hport = free_port(), free_port()
    run(["keys", "init", "--dir", str(root / "keys")])
    run(["pki", "init", "--dir", pki])
    for dev in ("d1", "d2", "d3"):
        run(
            [
                "provision",
                dev,
                "--pki",
                pki,
                "--broker",
                f"127.0.0.1:{dport}",
                "--trust-key",
                str(root / "keys" / "edgeloop.pub"),
                "--out",
                str(root / dev),
                "--state-dir",
                str(root / dev / "state"),
            ]
        )
    run(
        [
            "provision",
            "--host",
            "ops",
            "--pki",
            pki,
            "--broker",
            f"127.0.0.1:{hport}",
            "--keys",
            str(root / "keys"),
            "--out",
            str(root / "ops"),
        ]
    )
    broker_dir = root / "broker"
    run(
        [
            "broker-config",
            "--pki",
            pki,
            "--out",
            str(broker_dir),
            "--bind",
            "127.0.0.1",
            "--device-port",
            str(dport),
            "--host-port",
            str(hport),
            *(["--user", "root"] if os.geteuid() == 0 else []),
        ]
    )
    run(["pki", "revoke", "d3", "--pki", pki, "--broker-dir", str(broker_dir)])
    log = root / "mosquitto.log"
    with log.open("wb") as logf:
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(broker_dir / "mosquitto.conf")], stdout=logf, stderr=logf
        )
    try:
        wait_port(dport)
        wait_port(hport)
        yield Fleet(root, dport, hport, log, root / "ops" / "edgeloop-host.toml", proc)
    finally:
        proc.terminate()
        proc.wait(10)


class Client:
    """A TLS MQTT v5 client under one provisioned identity, recording what it receives."""

    def __init__(
        self,
        fleet: Fleet,
        name: str,
        subscriptions: list[str],
        *,
        host: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.inbox: queue.Queue[IncomingMessage] = queue.Queue()
        self.seen: list[IncomingMessage] = []
        self.client_id = client_id or f"{name}-{uuid.uuid4().hex[:8]}"
        self.transport = Transport(
            TransportConfig(
                host="127.0.0.1",
                port=fleet.host_port if host else fleet.device_port,
                client_id=self.client_id,
                tls=fleet.tls(name),
                clean_start=True,
                session_expiry_s=0,
                subscriptions=[(t, 1) for t in subscriptions],
                reconnect_min_s=30.0,
                reconnect_max_s=60.0,
            ),
            self.inbox.put,
        )
        self.transport.start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.transport.wait_connected(timeout)

    def wait(self, match: Any, timeout: float, what: str) -> IncomingMessage:
        deadline = time.monotonic() + timeout
        for m in self.seen:
            if match(m):
                return m
        while time.monotonic() < deadline:
            try:
                m = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(m)
            if match(m):
                return m
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def drain(self) -> list[IncomingMessage]:
        while not self.inbox.empty():
            self.seen.append(self.inbox.get_nowait())
        return self.seen

    def close(self) -> None:
        self.transport.stop(final=None)


class Agent:
    def __init__(self, fleet: Fleet, device_id: str) -> None:
        self.dir = fleet.device_dir(device_id)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "agent.log"

    def start(self) -> None:
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "-v",
                    "run",
                    "--config",
                    str(self.dir / "agent.toml"),
                    "--telemetry-interval",
                    "0.5",
                ],
                cwd=REPO,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=dict(os.environ) | {"PYTHONUNBUFFERED": "1"},
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


def command(host: Client, device: str, verb: str, cmd_id: str) -> None:
    topics = Topics("edgeloop", device)
    body = json.dumps({"id": cmd_id, "args": {}, "ts": time.time()})
    handle = host.transport.publish(
        topics.cmd(verb),
        body,
        response_topic=topics.reply(host.client_id),
        correlation_data=cmd_id.encode(),
        message_expiry_interval=300,
    )
    assert handle.wait(5) and handle.ok, handle.reason_code


def reply_to(cmd_id: str) -> Any:
    return lambda m: m.correlation_data == cmd_id.encode() and "/reply/" in m.topic


def ask_until_answered(host: Client, device: str, timeout: float = 60.0) -> dict[str, Any]:
    """cmd/state until one is answered (the agent subscribes just after its first connect)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cmd_id = uuid.uuid4().hex
        command(host, device, "state", cmd_id)
        try:
            msg = host.wait(reply_to(cmd_id), 2.0, "state reply")
        except AssertionError:
            continue
        body: dict[str, Any] = json.loads(msg.payload)
        return body
    raise AssertionError(f"{device} answered no cmd/state within {timeout}s")


@pytest.fixture(scope="module")
def d1(fleet: Fleet) -> Iterator[Agent]:
    agent = Agent(fleet, "d1")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def host(fleet: Fleet) -> Iterator[Client]:
    client = Client(fleet, "ops", ["edgeloop/dev/+/reply/+", "edgeloop/dev/+/telemetry"], host=True)
    assert client.wait_connected(), client.transport.stats().last_error
    yield client
    client.close()


def test_push_state_and_inference_replies_arrive_under_the_generated_acl(
    fleet: Fleet, d1: Agent, host: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ask_until_answered(host, "d1")
    assert state["status"] == "ok", state
    rc = deploy_main(
        [
            "push",
            str(model("digits_fp32")),
            "--device",
            "d1",
            "--host-config",
            str(fleet.host_config),
            "--name",
            "digits",
            "--min-inferences",
            "5",
            "--min-seconds",
            "0.5",
            "--timeout",
            "120",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["outcome"] == "committed", out
    x, labels = digits_data()
    topics = Topics("edgeloop", "d1")
    corr = uuid.uuid4().bytes
    host.transport.publish(
        topics.infer,
        json.dumps({"inputs": [x[0].tolist()]}),
        response_topic=topics.reply(host.client_id),
        correlation_data=corr,
    ).wait(5)
    body = json.loads(host.wait(lambda m: m.correlation_data == corr, 30, "inference").payload)
    assert body["ok"] is True and body["model"]["sha256"] == out["sha256"], body
    assert int(np.argmax(body["outputs"][0])) == int(labels[0])
    assert "0x87" not in d1.log.read_text() and "Not authorized" not in d1.log.read_text()


def test_d2_cannot_publish_into_d1s_tree(fleet: Fleet, d1: Agent) -> None:
    d2 = Client(fleet, "d2", [])
    try:
        assert d2.wait_connected(), d2.transport.stats().last_error
        for topic in ("edgeloop/dev/d1/state", "edgeloop/dev/d1/events", "edgeloop/dev/d1/cmd/x"):
            handle = d2.transport.publish(topic, b'{"online": true}')
            assert handle.wait(5)
            assert handle.reason_code == NOT_AUTHORIZED, (topic, handle.reason_code)
    finally:
        d2.close()


def test_d2_subscribed_to_everything_gets_nothing_of_d1(
    fleet: Fleet, d1: Agent, host: Client
) -> None:
    d2 = Client(fleet, "d2", ["edgeloop/#"])
    try:
        assert d2.wait_connected(), d2.transport.stats().last_error
        ask_until_answered(host, "d1")  # a command to d1 and its reply were routed
        host.wait(lambda m: m.topic == "edgeloop/dev/d1/telemetry", 10, "d1 telemetry")
        marker = uuid.uuid4().hex
        command(host, "d2", "state", marker)  # d2 reads its own cmd: it arrives after the rest
        d2.wait(lambda m: m.correlation_data == marker.encode(), 10, "d2's own command")
        leaked = [m.topic for m in d2.drain() if m.topic.startswith("edgeloop/dev/d1/")]
        assert leaked == []
    finally:
        d2.close()


def test_d2_as_d1s_client_id_neither_kicks_d1_nor_drops_its_queued_commands(
    fleet: Fleet, d1: Agent, host: Client
) -> None:
    ask_until_answered(host, "d1")
    start = fleet.log.stat().st_size  # the broker's log from this attempt on
    online = Client(fleet, "d2", [], client_id="edgeloop-d1")  # d1 online: a takeover attempt
    try:
        assert online.wait_connected(), online.transport.stats().last_error
        ask_until_answered(host, "d1")  # d1 still answers with the impostor connected
        log = fleet.log.read_bytes()[start:].decode(errors="replace")
        assert "as d2 " in log, log  # the broker named the session after d2's certificate
        assert "edgeloop-d1 already connected" not in log and "d1 already connected" not in log
    finally:
        online.close()
    d1.stop()  # a clean stop: the session (its subscriptions) stays for 3600 s
    queued = [uuid.uuid4().hex for _ in range(3)]
    for cmd_id in queued:
        command(host, "d1", "state", cmd_id)
    wiper = Client(fleet, "d2", [], client_id="edgeloop-d1")  # clean start under d1's id
    assert wiper.wait_connected(), wiper.transport.stats().last_error
    wiper.close()
    d1.start()
    for cmd_id in queued:
        msg = host.wait(reply_to(cmd_id), 60, f"the reply to queued command {cmd_id}")
        assert json.loads(msg.payload)["status"] == "ok"


def tls_refusal(client: Client) -> str:
    """The TLS error of a client the broker refuses (closed afterwards)."""
    try:
        assert not client.wait_connected(5)
        return str(wait_for(lambda: client.transport.stats().last_error, 10, "a TLS error"))
    finally:
        client.close()


def test_a_revoked_device_certificate_is_refused(fleet: Fleet) -> None:
    error = tls_refusal(Client(fleet, "d3", []))
    assert "revoked" in error, error


def test_a_host_identity_cannot_use_the_device_listener(fleet: Fleet) -> None:
    error = tls_refusal(Client(fleet, "ops", [], host=False))
    assert "unknown ca" in error, error


def test_host_config_is_what_provision_wrote(fleet: Fleet) -> None:
    cfg = load_host_config(fleet.host_config, environ={})
    assert (cfg.broker.host, cfg.broker.port) == ("127.0.0.1", fleet.host_port)
    assert cfg.broker.tls is not None and cfg.broker.tls.cert_file is not None
    assert cfg.keys == str(fleet.root / "keys")


def test_fleet_over_tls_from_the_host_config_lists_d1(
    fleet: Fleet, d1: Agent, host: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    ask_until_answered(host, "d1")
    capsys.readouterr()
    argv = ["fleet", "--host-config", str(fleet.host_config), "--wait", "3", "--json"]
    assert deploy_main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in rows if r["online"]] == ["d1"], rows


def explicit_tls(fleet: Fleet) -> list[str]:
    """The host's broker and TLS options spelled out, as without a host config file."""
    tls = fleet.tls("ops")
    return ["--broker", f"127.0.0.1:{fleet.host_port}", "--tls-ca", tls.ca_file,
            "--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]  # fmt: skip


def test_command_state_with_explicit_tls_flags_gets_d1s_reply(
    fleet: Fleet, d1: Agent, host: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    ask_until_answered(host, "d1")
    capsys.readouterr()
    assert deploy_main(["command", "state", "--device", "d1", *explicit_tls(fleet)]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["status"] == "ok" and reply["data"]["state"]["online"] is True, reply


def test_watch_over_tls_shows_d1s_telemetry(
    fleet: Fleet, d1: Agent, host: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    ask_until_answered(host, "d1")
    capsys.readouterr()
    assert deploy_main(["watch", "--seconds", "4", "--device", "d1", *explicit_tls(fleet)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["d1", "state", "online"] in [x[:3] for x in lines], lines  # the retained birth


def test_shared_model_stream_hosts_write_devices_only_read(fleet: Fleet, host: Client) -> None:
    """The generated ACL: the host publishes on ``edgeloop/models/{sha}/chunks`` and a device
    subscribed to it receives the chunk; a device publishing there gets 0x87."""
    stream = model_stream_topic("edgeloop", "ab" * 32)
    d2 = Client(fleet, "d2", [stream])
    try:
        assert d2.wait_connected(), d2.transport.stats().last_error
        frame = encode_chunk("ab" * 32, 0, b"chunk")
        handle = host.transport.publish(stream, frame)
        assert handle.wait(5) and handle.ok, handle.reason_code
        got = d2.wait(lambda m: m.topic == stream, 10, "the stream chunk at d2")
        assert got.payload == frame
        forged = d2.transport.publish(stream, frame)
        assert forged.wait(5)
        assert forged.reason_code == NOT_AUTHORIZED, forged.reason_code
    finally:
        d2.close()
