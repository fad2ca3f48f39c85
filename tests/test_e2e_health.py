"""RELIABILITY P7 and P8 end to end: bad models are stopped by the probe or the trial's health
gates and rolled back, a crash in trial is rolled back at the next start, and no model, however
broken, takes the agent process down. After each, the old model still answers inferences.

Bad models come from tests/models/bad_models.py (built at test time, no TensorFlow) and from
corrupting a committed digits model; they are signed with the trusted key, as a compromised or
buggy build pipeline would sign them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.agent_proc import AgentProcess
from tests.delivery_helpers import pointer_sha, sign_raw_body
from tests.e2e_host import (
    ScriptedHost,
    SeededDevice,
    assert_digits_serving,
    infer,
    sign_model,
)
from tests.models import bad_models
from tests.modelzoo import model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

QUICK = {"min_inferences": 20, "min_seconds": 0.5}
LONG_TRIAL = {"min_inferences": 20, "min_seconds": 60.0}


def _digits_fp32() -> bytes:
    return model("digits_fp32").read_bytes()


# name -> (model bytes, signed with a description, gates, kind, code, probe code, message part)
P7_CASES: dict[str, tuple[Callable[[], bytes], bool, dict[str, Any], str, str, str | None, str]] = {
    "signed_garbage": (bad_models.garbage, False, QUICK, "rolled_back", "model_file", None,
                       "not a TFLite flatbuffer"),
    "nan_outputs": (bad_models.nan_model, True, QUICK, "rolled_back", "probe_failed",
                    "bad_output", "NaN"),
    "wrong_output_shape": (bad_models.wrong_shape_model, True, QUICK, "rolled_back",
                           "probe_failed", "bad_output", "shape [1, 10]"),
    "misses_p95_gate": (_digits_fp32, True, QUICK | {"p95_ms": 0.0001}, "rolled_back",
                        "health_failed", None, "p95"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(P7_CASES))
def test_bad_model_is_rolled_back_and_the_old_one_serves(
    case: str,
    seeded: SeededDevice,
) -> None:
    make, describe, gates, kind, code, probe_code, part = P7_CASES[case]
    old_sha = seeded.old_sha
    data = make()
    signed = seeded.sign(data, describe=describe)
    sha = signed.manifest.sha256
    agent = seeded.start()
    pid = agent.pid
    with seeded.host(data, signed) as host:
        cmd = host.deploy(signed, gates=gates)
        event = host.wait_event(kind, sha)
        assert event.code == code, event
        assert part in event.message, event.message
        if probe_code is not None:
            assert event.data["probe"]["code"] == probe_code, event.data
        reply = host.wait_reply(cmd, status="error")
        assert reply.code == code
        assert host.events_of("committed") == []
        # the trial ran only where the gate is a trial gate
        assert bool(host.events_of("trial_started", sha)) is (code == "health_failed")
        assert_digits_serving(agent, old_sha)
    assert pointer_sha(agent.state_dir) == old_sha
    assert pointer_sha(agent.state_dir, "trial") is None
    assert agent.pid == pid and agent.alive()


@contextlib.contextmanager
def in_long_trial(
    seeded: SeededDevice, data: bytes
) -> Iterator[tuple[AgentProcess, ScriptedHost, str]]:
    """pi-01 started on the seeded state, ``data`` (release 2) deployed with LONG_TRIAL gates
    and its trial started: yields the agent, the host and the new model's sha256."""
    signed = seeded.sign(data)
    agent = seeded.start()
    with seeded.host(data, signed) as host:
        host.deploy(signed, gates=LONG_TRIAL)
        host.wait_event("trial_started", signed.manifest.sha256)
        yield agent, host, signed.manifest.sha256


def test_nan_on_real_input_during_trial_fails_the_health_gate(seeded: SeededDevice) -> None:
    """A model fine on the probe's inputs (SQRT of [0, 1)) that returns NaN for a real request
    during the trial (a negative input): the trial fails (health_failed) and rolls back."""
    old_sha = seeded.old_sha
    with in_long_trial(seeded, bad_models.sqrt_model(4)) as (agent, host, sha):
        body = infer(seeded.broker, "pi-01", [[-1.0, 0.25, 0.5, 1.0]])
        assert body["model"]["sha256"] == sha  # the trial model answered, with NaN
        assert body["outputs"][0][0][0] != body["outputs"][0][0][0]
        event = host.wait_event("rolled_back", sha, timeout=30)
        assert event.code == "health_failed" and "NaN" in event.message, event
        assert host.events_of("committed") == []
        assert_digits_serving(agent, old_sha)


def test_sigkill_during_trial_rolls_back_at_next_start(seeded: SeededDevice) -> None:
    old_sha = seeded.old_sha
    with in_long_trial(seeded, model("digits_fp32").read_bytes()) as (agent, host, sha):
        assert pointer_sha(agent.state_dir, "trial") == sha
        agent.kill()  # SIGKILL from outside, mid-trial
        agent.start()
        event = host.wait_event("rolled_back", sha, timeout=30)
        assert event.code == "crashed_in_trial", event
        assert host.events_of("committed") == []
        assert_digits_serving(agent, old_sha)
    assert pointer_sha(agent.state_dir, "trial") is None
    assert pointer_sha(agent.state_dir) == old_sha


# ---- P8: a crashing loader cannot kill the agent --------------------------------------------

CORRUPT = ["header8", "truncated50", "random", "flipped"]


@pytest.mark.parametrize("variant", CORRUPT)
def test_corrupt_model_file_never_kills_the_agent(
    variant: str,
    seeded: SeededDevice,
) -> None:
    old_sha = seeded.old_sha
    data = bad_models.corrupt_variants(model("digits_int8").read_bytes())[variant]
    signed = seeded.sign(data, describe=False)
    sha = signed.manifest.sha256
    agent = seeded.start()
    pid = agent.pid
    with seeded.host(data, signed) as host:
        host.deploy(signed)
        event = host.wait_event("rolled_back", sha)
        if variant == "flipped":
            # it parses as a flatbuffer, so it reached the interpreter, in the sandbox child
            assert event.code == "probe_failed", event
            assert event.data["probe"]["stage"] == "load", event.data
            assert "schema version" in event.message
        else:
            assert event.code == "model_file", event
        assert host.events_of("trial_started") == []
        assert_digits_serving(agent, old_sha)
    assert agent.pid == pid and agent.alive()


def test_empty_model_is_refused_as_invalid(seeded: SeededDevice) -> None:
    """0 bytes cannot even be described by a manifest (size >= 1): a host that signs one
    anyway gets ``invalid`` at accept, before anything is written."""
    old_sha = seeded.old_sha
    key = seeded.key
    body = sign_model(b"x", key, release=2, describe=False).manifest.to_dict()
    body.update(
        size=0, chunks=[], sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    envelope = json.loads(sign_raw_body(key, body))
    agent = seeded.start()
    pid = agent.pid
    with seeded.host() as host:
        cmd = host.deploy(envelope)
        reply = host.wait_reply(cmd)
        assert (reply.status, reply.code) == ("rejected", "invalid"), reply
        assert host.wait_event("rejected").code == "invalid"
        assert_digits_serving(agent, old_sha)
    assert agent.pid == pid and agent.alive()


@pytest.mark.parametrize(("mode", "signal"), [("segv", "SIGSEGV"), ("abort", "SIGABRT")])
def test_loader_killed_by_a_signal_is_reported_and_the_agent_lives(
    mode: str,
    signal: str,
    seeded: SeededDevice,
) -> None:
    """The sandbox child dies by a signal right after loading (EDGELOOP_SANDBOX_CRASH, the
    sandbox's test hook, read only in the child): the event names the signal."""
    old_sha = seeded.old_sha
    data = model("digits_fp32").read_bytes()
    signed = seeded.sign(data)
    sha = signed.manifest.sha256
    agent = seeded.start(env={"EDGELOOP_SANDBOX_CRASH": mode})
    pid = agent.pid
    with seeded.host(data, signed) as host:
        host.deploy(signed)
        event = host.wait_event("rolled_back", sha)
        assert event.code == "probe_failed", event
        assert event.data["signal"] == signal, event.data
        assert signal in event.message
        assert event.data["probe"]["code"] == "crashed"
        assert host.events_of("trial_started") == []
        assert_digits_serving(agent, old_sha)
    assert agent.pid == pid and agent.alive()
