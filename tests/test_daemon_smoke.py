"""End to end: push a model to a real agent over a real Mosquitto, serve it, see telemetry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.mqtt.types import IncomingMessage
from deploy.keys import load_private
from deploy.mqtt import BrokerAddress
from deploy.push import push_model
from tests.agent_proc import AgentProcess, Observer, observing
from tests.broker import Broker
from tests.modelzoo import digits_data, model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]


def test_push_commits_serves_and_reports(
    broker: Broker, keys_dir: Path, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent("pi-01")
    with observing(broker, "pi-01") as obs:
        result = push_model(
            model("digits_int8"), "pi-01", BrokerAddress(broker.host, broker.port),
            load_private(keys_dir), name="digits", version="1", release=1,
            gates={"min_inferences": 20, "min_seconds": 0.5}, progress=None, timeout_s=120,
        )  # fmt: skip
        assert result.ok, result
        assert result.outcome == "committed"
        committed = obs.wait_event("committed", sha256=result.sha256)
        assert committed["data"]["inferences"] >= 20
        # the retained state names the new model
        state = agent.state()
        assert state is not None and state["model"]["sha256"] == result.sha256
        # inference over MQTT with response topic + correlation data
        x, labels = digits_data()
        reply_topic = f"test/{uuid.uuid4().hex}"
        with Observer(broker, [reply_topic]) as replies:
            corr = b"req-1"
            obs.transport.publish(
                "edgeloop/dev/pi-01/infer",
                json.dumps({"inputs": [x[0].tolist()]}),
                response_topic=reply_topic,
                correlation_data=corr,
            ).wait(5)

            def is_reply(m: IncomingMessage) -> bool:
                return m.correlation_data == corr

            msg = replies.wait_message(is_reply, 30, "inference reply")
            assert msg is not None
            body = json.loads(msg.payload)
        assert body["ok"] is True
        assert int(np.argmax(body["outputs"][0])) == int(labels[0])
        assert body["latency_ms"] > 0
        # telemetry windows carry the real inferences of the trial and the infer request
        tel = obs.wait_message(
            lambda m: m.topic.endswith("/telemetry") and json.loads(m.payload)["inferences"] > 0,
            30,
            "a telemetry window with inferences",
        )
        assert tel is not None
        record = json.loads(tel.payload)
        assert record["model"]["sha256"] == result.sha256
        assert record["latency_ms"]["p95"] >= record["latency_ms"]["p50"] > 0


def test_push_cli_chunk_size_reaches_the_wire(
    broker: Broker, keys_dir: Path, start_agent: Callable[..., AgentProcess]
) -> None:
    """`edge-deploy push --chunk-kib`: the manifest is signed with that chunk size and the
    transfer moves that many chunks; an impossible size is refused before anything moves."""
    import math
    import subprocess
    import sys

    start_agent("pi-01")
    path = model("digits_int8")
    cli = [sys.executable, "-c", "import sys; from deploy.cli.main import main; sys.exit(main())",
           "push", str(path), "--device", "pi-01", "--broker", broker.url,
           "--keys", str(keys_dir), "--name", "digits", "--min-inferences", "20",
           "--min-seconds", "0.5", "--json"]  # fmt: skip
    done = subprocess.run([*cli, "--chunk-kib", "4"], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "committed"
    assert result["chunks_sent"] == math.ceil(path.stat().st_size / 4096) > 1
    bad = subprocess.run([*cli, "--chunk-kib", "0"], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 2 and "--chunk-kib 0: must be 1..4096" in bad.stderr
