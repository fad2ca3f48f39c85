"""P4 and P19 end to end: a device's anti-rollback counter is its slot's, whatever the model's
name; a manifest for another device, class or slot is refused; going back is a NEW signed
manifest of the older artifact above the counter, installed from the device's store when it
still holds the bytes.

python-tuf style: one attack per test, the specific reason code, and the trusted state
(``current``, ``counters.json``, models/, staging/, pointers) unchanged. The real agent runs
on a copy of a state dir where digits_int8 r1 is committed (``seeded``), over a real Mosquitto.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.wire.manifest import SignedManifest
from agent.wire.messages import Command
from agent.wire.signed import sign_command
from deploy.cli.main import main as deploy_main
from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import ModelRow, Variant
from deploy.fleet.rollout import Deployer
from deploy.mqtt import BrokerAddress
from deploy.rollback import device_state, plan_rollback
from tests.agent_proc import AgentProcess
from tests.delivery_helpers import pointer_sha, sha256_file, store_view
from tests.e2e_host import (
    GATES,
    ScriptedHost,
    SeededDevice,
    Sent,
    assert_digits_serving,
    sign_model,
)
from tests.modelzoo import model

pytestmark = [pytest.mark.broker, pytest.mark.runtime]

CURRENT = "digits_fp32"  # committed as digits r20 before each attack


def install(seeded: SeededDevice, name: str, signed: SignedManifest) -> ScriptedHost:
    """Deploy ``signed`` (the bytes of model ``name``) and wait until it is committed."""
    with seeded.host(model(name), signed) as host:
        cmd = host.deploy(signed)
        host.wait_event("committed", signed.manifest.sha256)
        assert host.wait_reply(cmd, status="ok").code == "committed"
    return host


def at_release_20(seeded: SeededDevice) -> tuple[AgentProcess, str]:
    """pi-01 serving digits_fp32 as ``digits`` r20 (slot main, as edge-deploy push signs)."""
    agent = seeded.start()
    r20 = seeded.sign(model(CURRENT), release=20, slot="main")
    install(seeded, CURRENT, r20)
    return agent, r20.manifest.sha256


# ---- attacks: each refused with its reason, nothing changes --------------------------------

ATTACKS: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {
    # the attack: a signed "digits-renamed" r1 after "digits" r20, same (default) slot
    "renamed_model_lower_release": (
        {"name": "digits-renamed", "release": 1, "slot": "main"},
        ("rejected", "rollback"),
    ),
    # the same with manifests signed before slots (no slot field: the device's slot)
    "renamed_model_lower_release_no_slot": (
        {"name": "digits-renamed", "release": 1},
        ("rejected", "rollback"),
    ),
    "older_release_of_the_same_name": ({"release": 19}, ("rejected", "rollback")),
    # another artifact under another name at the slot's own release: a no-op, not an install
    "renamed_model_same_release": (
        {"name": "digits-renamed", "release": 20},
        ("duplicate", "replayed"),
    ),
    "manifest_for_another_slot": (
        {"release": 21, "slot": "camera"},
        ("rejected", "wrong_slot"),
    ),
    "manifest_for_another_device": (
        {"release": 21, "targets": {"devices": ["pi-02"]}},
        ("rejected", "wrong_target"),
    ),
    "manifest_for_another_class": (
        {"release": 21, "targets": {"classes": ["coral-usb"]}},
        ("rejected", "wrong_target"),
    ),
}


@pytest.mark.parametrize("case", list(ATTACKS))
def test_manifest_attack_is_refused_and_changes_nothing(case: str, seeded: SeededDevice) -> None:
    overrides, expected = dict(ATTACKS[case][0]), ATTACKS[case][1]
    agent, current = at_release_20(seeded)
    before = store_view(agent.state_dir)
    attack = model("digits_fp16")
    release = overrides.pop("release")
    signed = seeded.sign(attack, release=release, **overrides)
    with seeded.host(attack, signed) as host:
        reply = host.wait_reply(host.deploy(signed))
        assert (reply.status, reply.code) == expected, reply
        assert host.needs == []  # not a byte fetched
        assert host.events_of("install_accepted") == []
    assert store_view(agent.state_dir) == before  # current, counters, files
    assert_digits_serving(agent, current)
    state = agent.state()
    assert state is not None and state["slot_release"] == 20, state


def test_an_untargeted_manifest_is_refused_where_targets_are_required(
    seeded: SeededDevice,
) -> None:
    """A provisioned device (``require_targets = true``) takes only manifests that name it or
    its class: one signed by the trusted key for "anyone" is refused before a byte moves."""
    agent = seeded.start(require_targets=True)
    before = store_view(agent.state_dir)
    attack = model("digits_fp16")
    signed = seeded.sign(attack, release=21)
    assert signed.manifest.targets is None
    with seeded.host(attack, signed) as host:
        reply = host.wait_reply(host.deploy(signed))
        assert (reply.status, reply.code) == ("rejected", "wrong_target"), reply
        assert "require_targets" in reply.message
        assert host.needs == [] and host.events_of("install_accepted") == []
    assert store_view(agent.state_dir) == before  # current, counters, files
    assert_digits_serving(agent, seeded.old_sha)
    addressed = seeded.sign(attack, release=21, targets={"devices": ["pi-01"]})
    install(seeded, "digits_fp16", addressed)  # the same bytes, addressed: committed


# ---- going back: a new manifest of the older artifact above the counter ---------------------


def test_edge_deploy_rollback_installs_the_previous_model_from_the_store(
    seeded: SeededDevice, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """r1 (int8) then r2 (fp32): `edge-deploy rollback` signs int8 again as r3 for pi-01's
    slot; the device still holds the bytes (its last_good), so no chunk moves."""
    agent = seeded.start()
    install(seeded, CURRENT, seeded.sign(model(CURRENT), release=2, slot="main"))
    state = agent.state()
    assert state is not None and state["last_good"]["sha256"] == seeded.old_sha, state
    argv = ["rollback", "--device", "pi-01", "--model", str(model("digits_int8")),
            "--broker", seeded.broker.url, "--keys", str(keys_dir), "--json",
            "--min-inferences", "20", "--min-seconds", "0.5", "--timeout", "120"]  # fmt: skip
    assert deploy_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["outcome"], result["release"], result["chunks_sent"]) == ("committed", 3, 0)
    assert pointer_sha(agent.state_dir) == seeded.old_sha
    assert_digits_serving(agent, seeded.old_sha)
    state = agent.state()
    assert state is not None
    assert (state["model"]["release"], state["slot_release"]) == (3, 3), state
    assert state["last_good"]["sha256"] == sha256_file(model(CURRENT))


def test_edge_deploy_rollback_refuses_bytes_that_are_not_the_previous_model(
    seeded: SeededDevice, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = seeded.start()
    install(seeded, CURRENT, seeded.sign(model(CURRENT), release=2, slot="main"))
    before = store_view(agent.state_dir)
    argv = ["rollback", "--device", "pi-01", "--model", str(model("digits_fp16")),
            "--broker", seeded.broker.url, "--keys", str(keys_dir)]  # fmt: skip
    assert deploy_main(argv) == 2
    assert "not " + seeded.old_sha[:12] in capsys.readouterr().err
    assert store_view(agent.state_dir) == before


def test_a_replayed_rollback_manifest_changes_nothing(seeded: SeededDevice) -> None:
    """After going back (int8 as r3), the rollback manifest replayed is a no-op and the r2
    manifest it went back from is a rollback: r2's bytes do not come back by replay."""
    agent = seeded.start()
    r2 = seeded.sign(model(CURRENT), release=2, slot="main")
    install(seeded, CURRENT, r2)
    address = BrokerAddress(seeded.broker.host, seeded.broker.port)
    plan = plan_rollback(device_state(address, "pi-01"), "pi-01", model=model("digits_int8"))
    back = plan.sign(seeded.key)
    assert (back.manifest.release, back.manifest.sha256) == (3, seeded.old_sha)
    install(seeded, "digits_int8", back)
    before = store_view(agent.state_dir)
    for replay, expected in ((back, ("duplicate", "replayed")), (r2, ("rejected", "rollback"))):
        with seeded.host(model(CURRENT), replay) as host:
            reply = host.wait_reply(host.deploy(replay))
            assert (reply.status, reply.code) == expected, (replay.manifest.release, reply)
            assert host.needs == []
        assert store_view(agent.state_dir) == before
    assert_digits_serving(agent, seeded.old_sha)


def test_the_signed_rollback_command_cannot_take_the_device_back(seeded: SeededDevice) -> None:
    """cmd/rollback only abandons an install in progress: with none, it is refused
    (``no_install``) and ``current`` stays above last_good, counters unchanged."""
    agent = seeded.start()
    r2 = seeded.sign(model(CURRENT), release=2, slot="main")
    install(seeded, CURRENT, r2)
    counters = (agent.state_dir / "counters.json").read_bytes()
    ts, cmd_id = time.time(), uuid.uuid4().hex
    auth = sign_command(seeded.key, "rollback", cmd_id, {}, ts, 1, {"device": "pi-01"})
    with seeded.host() as host:
        cmd = Command("rollback", cmd_id, {}, ts, auth)
        host.publish(Sent(host.topics.cmd("rollback"), cmd.to_json(), host.reply_topic,
                          cmd_id.encode()))  # fmt: skip
        reply = host.wait_reply(cmd_id)
        assert (reply.status, reply.code) == ("rejected", "no_install"), reply
    assert pointer_sha(agent.state_dir) == r2.manifest.sha256
    assert (agent.state_dir / "counters.json").read_bytes() == counters
    assert_digits_serving(agent, r2.manifest.sha256)


def test_a_deployer_rollback_is_a_higher_release_of_the_old_bytes_under_any_name(
    seeded: SeededDevice, tmp_path: Path
) -> None:
    """The loop's Deployer for a model named unlike the one the device serves ("digits2"
    vs "digits" r1): its first release lands above the device's slot counter (not 1, which
    the slot would refuse), and its rollback to the previous variant is a new manifest of
    the old bytes that moves no chunk (and pulls them when the device no longer holds them)."""
    agent = seeded.start()
    reg = Registry(tmp_path / "registry.sqlite")
    reg.add_model(ModelRow("digits2", "digits.keras", "0" * 64))
    variants = {}
    for recipe, name in (("int8", "digits_int8"), ("fp32", CURRENT)):
        path = model(name)
        v = Variant(f"digits2-{recipe}", "digits2", recipe, str(path), sha256_file(path),
                    path.stat().st_size, recipe)  # fmt: skip
        reg.add_variant(v)
        variants[recipe] = v
    address = BrokerAddress(seeded.broker.host, seeded.broker.port)
    dep = Deployer(reg, address, seeded.key, "digits2", gates=GATES, timeout_s=120)

    def refresh() -> None:
        state = agent.state()
        assert state is not None
        reg.upsert_device_from_state("pi-01", state)

    refresh()
    up = dep.push("pi-01", variants["fp32"])
    assert (up.outcome, up.release) == ("committed", 2), up
    refresh()
    back = dep.rollback("pi-01", variants["int8"], why="test")
    assert (back.ok, back.outcome, back.chunks_sent) == (True, "committed", 0), back
    assert back.release == 3
    assert pointer_sha(agent.state_dir) == seeded.old_sha
    assert_digits_serving(agent, seeded.old_sha)
    # a device that no longer holds the older bytes pulls them, like any push
    assert agent.stop() == 0
    (agent.state_dir / "models" / f"{variants['fp32'].sha256}.tflite").unlink()
    agent.start()
    refresh()
    again = dep.rollback("pi-01", variants["fp32"], why="test")
    assert (again.outcome, again.release) == ("committed", 4), again
    assert again.chunks_sent > 0 and again.bytes_sent == variants["fp32"].size
    assert pointer_sha(agent.state_dir) == variants["fp32"].sha256


def test_unslotted_and_slotted_manifests_fill_the_same_device_slot(seeded: SeededDevice) -> None:
    """Backwards compatibility: a manifest signed without ``slot`` fills the device's slot, so
    after it a slotted one below its release is refused, and the other way round."""
    agent = seeded.start()
    unslotted = sign_model(model(CURRENT), seeded.key, release=5)
    assert unslotted.manifest.slot is None
    install(seeded, CURRENT, unslotted)
    before = store_view(agent.state_dir)
    older = seeded.sign(model("digits_fp16"), release=4, name="other", slot="main")
    with seeded.host(model("digits_fp16"), older) as host:
        reply = host.wait_reply(host.deploy(older))
        assert (reply.status, reply.code) == ("rejected", "rollback"), reply
    assert store_view(agent.state_dir) == before
    saved = json.loads((agent.state_dir / "counters.json").read_text())
    assert saved["slots"]["main"] == 5, saved
