"""RELIABILITY P3-P6 end to end: what a device refuses, and that refusing changes nothing.

Each test runs the real agent (on a copy of a state dir where digits_int8 r1 is committed) and a
host over a real Mosquitto. A refused deploy must come back as a reply and an event with the
specific reason code, leave ``current`` (and for refusals at accept, the whole store) unchanged,
never reach the probe or a trial, and leave the old model serving.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire.trust import key_id_of
from deploy.mqtt import BrokerAddress
from deploy.push import push_model
from tests.delivery_helpers import model_files, pointer_sha, store_view
from tests.e2e_host import (
    GATES,
    ScriptedHost,
    SeededDevice,
    assert_digits_serving,
    sign_model,
)
from tests.models.make_models import MODELS_DIR
from tests.modelzoo import active_runtime, model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

HW_TREES = Path(__file__).parent / "hwtrees"
INSTALL_KINDS = ("install_accepted", "install_verified", "trial_started", "committed")


def assert_nothing_installed(
    host: ScriptedHost, sha256: str, state_dir: Path, *, accepted: bool = False
) -> None:
    """No probe, no trial, no file in models/ or staging/ for ``sha256`` (and unless the
    manifest was ``accepted`` first, not even an install_accepted)."""
    for kind in INSTALL_KINDS[1:] if accepted else INSTALL_KINDS:
        assert host.events_of(kind, sha256) == [], kind
    assert sha256 not in model_files(state_dir)
    assert not list((state_dir / "staging").iterdir())


# ---- P3: signature first, before anything is parsed or written ----------------------------


def _unsigned(env: dict[str, Any], _k: Ed25519PrivateKey, _o: Ed25519PrivateKey) -> None:
    del env["sig"]


def _wrong_key(env: dict[str, Any], _k: Ed25519PrivateKey, other: Ed25519PrivateKey) -> None:
    forged = sign_model(model("digits_fp32"), other, release=2)
    env.clear()
    env.update(forged.to_dict())


def _trusted_id_wrong_key(env: dict[str, Any], key: Ed25519PrivateKey,
                          other: Ed25519PrivateKey) -> None:  # fmt: skip
    _wrong_key(env, key, other)
    env["key_id"] = env["manifest"]["key_id"] = key_id_of(key.public_key())


def _tampered_release(env: dict[str, Any], _k: Ed25519PrivateKey, _o: Ed25519PrivateKey) -> None:
    env["manifest"]["release"] = 99


def _tampered_chunk_hash(env: dict[str, Any], _k: Ed25519PrivateKey,
                         _o: Ed25519PrivateKey) -> None:  # fmt: skip
    env["manifest"]["chunks"][0] = "0" * 64


TAMPERING = {
    "unsigned": (_unsigned, "malformed"),
    "unknown_key": (_wrong_key, "unknown_key"),
    "trusted_key_id_wrong_key": (_trusted_id_wrong_key, "bad_signature"),
    "tampered_release": (_tampered_release, "bad_signature"),
    "tampered_chunk_hash": (_tampered_chunk_hash, "bad_signature"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_unauthentic_manifest_is_rejected_and_changes_nothing(
    case: str,
    seeded: SeededDevice,
) -> None:
    tamper, code = TAMPERING[case]
    old_sha = seeded.old_sha
    key, other = seeded.key, Ed25519PrivateKey.generate()
    new = model("digits_fp32")
    signed = sign_model(new, key, release=2)
    envelope = copy.deepcopy(signed.to_dict())
    tamper(envelope, key, other)
    agent = seeded.start()
    pid, before = agent.pid, store_view(agent.state_dir)
    with seeded.host(new, signed) as host:
        cmd = host.deploy(envelope)
        reply = host.wait_reply(cmd)
        assert (reply.status, reply.code) == ("rejected", code), reply
        event = host.wait_event("rejected")
        assert event.code == code and event.data.get("cmd_id") == cmd, event
        assert_digits_serving(agent, old_sha)
        assert host.needs == []  # nothing was fetched
        assert_nothing_installed(host, signed.manifest.sha256, agent.state_dir)
    assert store_view(agent.state_dir) == before
    assert agent.pid == pid and agent.alive()


def test_tampered_chunks_are_refused_until_the_agent_gives_up(seeded: SeededDevice) -> None:
    """A host (or a path) that keeps serving wrong bytes for one chunk: each copy fails its
    sha256 and is asked for again, a bounded number of times, then the install is refused
    (``bad_chunk``) with nothing written to models/."""
    old_sha = seeded.old_sha
    new = model("digits_fp32")
    signed = seeded.sign(new, chunk_size=8192)
    agent = seeded.start()
    with seeded.host(new, signed) as host:
        host.corrupt = {3: 1000}
        cmd = host.deploy(signed)
        event = host.wait_event("rejected", signed.manifest.sha256, timeout=60)
        assert event.code == "bad_chunk", event
        reply = host.wait_reply(cmd, status="error")
        assert reply.code == "bad_chunk"
        asked_for_3 = sum(3 in n.indexes() for n in host.needs)
        assert 2 <= asked_for_3 <= 10, asked_for_3  # re-requested, but not forever
        assert_nothing_installed(host, signed.manifest.sha256, agent.state_dir, accepted=True)
        assert_digits_serving(agent, old_sha)
    assert pointer_sha(agent.state_dir) == old_sha


def test_one_bad_chunk_is_fetched_again_and_the_install_succeeds(seeded: SeededDevice) -> None:
    new = model("digits_fp32")
    signed = seeded.sign(new, chunk_size=8192)
    agent = seeded.start()
    with seeded.host(new, signed) as host:
        host.corrupt = {3: 1}
        host.deploy(signed)
        host.wait_event("committed", signed.manifest.sha256)
        verified = host.wait_event("install_verified", signed.manifest.sha256)
        assert verified.data["corrupt_chunks"] == 1
        # the bad chunk alone was asked for again, not the whole window
        assert [n.indexes() for n in host.needs].count([3]) == 1
        assert host.chunks_sent == signed.manifest.chunk_count + 1
    assert pointer_sha(agent.state_dir) == signed.manifest.sha256


def test_whole_file_mismatch_is_rejected_before_any_probe(seeded: SeededDevice) -> None:
    """Every chunk matches its signed hash, but the signed whole-file sha256 is another file's:
    the assembled file is discarded (``bad_model``), never moved to models/ nor probed."""
    old_sha = seeded.old_sha
    new = model("digits_fp32")
    other_sha = "ab" * 32
    signed = seeded.sign(new, sha256=other_sha)
    agent = seeded.start()
    with seeded.host(new, signed) as host:
        cmd = host.deploy(signed)
        assert host.wait_reply(cmd, status="accepted")
        event = host.wait_event("rejected", other_sha)
        assert event.code == "bad_model", event
        assert host.chunks_sent == signed.manifest.chunk_count
        assert_nothing_installed(host, other_sha, agent.state_dir, accepted=True)
        assert_digits_serving(agent, old_sha)


# ---- P4: anti-rollback survives a restart -------------------------------------------------


def test_older_release_is_refused_before_and_after_a_restart(seeded: SeededDevice) -> None:
    key = seeded.key
    address = BrokerAddress(seeded.broker.host, seeded.broker.port)

    def push(name: str, release: int) -> Any:
        return push_model(model(name), "pi-01", address, key, name="digits",
                          version=f"1.{release}", release=release, gates=GATES,
                          progress=None, timeout_s=60)  # fmt: skip

    agent = seeded.start()
    r5 = push("digits_fp32", 5)
    assert r5.outcome == "committed", r5
    r4 = push("digits_fp16", 4)
    assert (r4.ok, r4.outcome, r4.code) == (False, "rejected", "rollback"), r4
    again = push("digits_fp32", 5)
    assert (again.ok, again.outcome) == (True, "duplicate"), again
    assert again.chunks_sent == 0

    assert agent.stop() == 0
    agent.start()
    r4 = push("digits_fp16", 4)
    assert (r4.ok, r4.outcome, r4.code) == (False, "rejected", "rollback"), r4
    assert r4.chunks_sent == 0
    assert pointer_sha(agent.state_dir) == r5.sha256
    assert_digits_serving(agent, r5.sha256)


# ---- P5: freeze and staleness -------------------------------------------------------------


def test_expired_manifest_is_refused(seeded: SeededDevice) -> None:
    old_sha = seeded.old_sha
    new = model("digits_fp32")
    signed = seeded.sign(new, now=time.time() - 7200, ttl_s=3600)
    agent = seeded.start()
    before = store_view(agent.state_dir)
    with seeded.host(new, signed) as host:
        cmd = host.deploy(signed)
        reply = host.wait_reply(cmd)
        assert (reply.status, reply.code) == ("rejected", "expired"), reply
        assert host.wait_event("rejected").code == "expired"
        assert_nothing_installed(host, signed.manifest.sha256, agent.state_dir)
    assert store_view(agent.state_dir) == before
    assert_digits_serving(agent, old_sha)


def test_command_queued_past_its_expiry_is_not_acted_on(seeded: SeededDevice) -> None:
    """A deploy published with a 2 s MQTT5 message expiry while the agent is down: the broker
    holds it in the agent's persistent session, and drops it once expired. A command queued
    without expiry at the same time is delivered (the session really queued)."""
    old_sha = seeded.old_sha
    new = model("digits_fp32")
    signed = seeded.sign(new)
    agent = seeded.start()  # connected + subscribed once
    assert agent.stop() == 0
    with seeded.host(new, signed) as host:
        stale = host.deploy(signed, expiry=2)
        queued_at = time.monotonic()
        fresh = host.command("state")
        # Let the expiry pass: the broker's clock decides, not a race in the test.
        time.sleep(max(0.0, queued_at + 3.0 - time.monotonic()))
        agent.start()
        assert host.wait_reply(fresh).status == "ok"
        assert host.replies_to(stale) == []
        assert_nothing_installed(host, signed.manifest.sha256, agent.state_dir)
        assert host.needs == []
    assert_digits_serving(agent, old_sha)


# ---- P6: compatibility before activation --------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_edgetpu_model_on_a_cpu_only_board_is_rejected_before_activation(
    declared: bool,
    seeded: SeededDevice,
) -> None:
    """Declared: the manifest says it needs an Edge TPU (refused at accept, nothing moves).
    Undeclared: a manifest that does not say so; the file itself is checked after the transfer
    and refused before the probe."""
    old_sha = seeded.old_sha
    new = model("digits_edgetpu")
    signed = seeded.sign(new, describe=declared)
    agent = seeded.start(hw_root=str(HW_TREES / "rpi4b"))
    with seeded.host(new, signed) as host:
        cmd = host.deploy(signed)
        if declared:
            reply = host.wait_reply(cmd)
            assert (reply.status, reply.code) == ("rejected", "incompatible"), reply
            assert "Edge TPU" in reply.message
            event = host.wait_event("rejected", signed.manifest.sha256)
            assert host.needs == []
        else:
            event = host.wait_event("rolled_back", signed.manifest.sha256)
            assert "edgetpu-custom-op" in event.message, event
        assert event.code == "incompatible", event
        for kind in ("trial_started", "committed"):
            assert host.events_of(kind) == []
    assert pointer_sha(agent.state_dir) == old_sha
    assert_digits_serving(agent, old_sha)


@pytest.mark.skipif(
    active_runtime() != "tflite-runtime", reason="FULLY_CONNECTED v12 loads on newer runtimes"
)
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_new_converter_model_is_rejected_by_tflite_runtime_214(
    declared: bool,
    seeded: SeededDevice,
) -> None:
    """TF 2.21's dynamic-range int8 model uses FULLY_CONNECTED v12, which tflite-runtime 2.14
    (its last release) does not have: refused as incompatible, naming the operator."""
    old_sha = seeded.old_sha
    new = MODELS_DIR / "digits_dynamic_int8.tflite"  # the current conversion, NOT legacy/
    signed = seeded.sign(new, describe=declared)
    agent = seeded.start()
    with seeded.host(new, signed) as host:
        host.deploy(signed)
        kind = "rejected" if declared else "rolled_back"
        event = host.wait_event(kind, signed.manifest.sha256)
        assert event.code == "incompatible", event
        assert "FULLY_CONNECTED v12" in event.message, event.message
        assert host.events_of("trial_started") == []
        assert (host.needs == []) is declared
    assert pointer_sha(agent.state_dir) == old_sha
    assert_digits_serving(agent, old_sha)
