"""Signed commands (agent/wire/signed.py, agent/delivery/cmdguard.py), python-tuf style: one
attack per test, the specific reason code, and the trusted state unchanged.

The unit tests call the pure verifier; the end-to-end ones send each attack to the real agent
over a real Mosquitto and check the reply code, that ``current`` still names the same model and
that ``command_auth.json`` (the accepted sequence numbers and clock floor) did not move.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import ProtocolError
from agent.wire.ed25519 import PublicKey
from agent.wire.messages import MAX_BENCH_RUNS, MAX_LOADGEN_HZ, Command
from agent.wire.signed import FUTURE_S, MAX_AGE_S, needs_signature, sign_command, verify_command
from deploy.cli.main import main as deploy_main
from tests.delivery_helpers import pointer_sha
from tests.e2e_host import ScriptedHost, SeededDevice, Sent, sign_model
from tests.modelzoo import model

NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()
TRUST = {PublicKey.of(KEY.public_key()).key_id: PublicKey.of(KEY.public_key())}
ARGS: dict[str, Any] = {"loadgen": {"enabled": True, "rate_hz": 5}}


def signed(
    key: Ed25519PrivateKey = KEY,
    *,
    verb: str = "config",
    args: dict[str, Any] | None = None,
    ts: float = NOW,
    seq: int = 5,
    target: dict[str, str] | None = None,
) -> Command:
    a = dict(ARGS if args is None else args)
    auth = sign_command(key, verb, "c-1", a, ts, seq, target or {"device": "pi-01"})
    return Command(verb, "c-1", a, ts, auth)


def check(cmd: Command, *, last_seq: int = 4, floor: float = 0.0) -> None:
    verify_command(
        cmd.verb,
        cmd.id,
        cmd.args,
        cmd.ts,
        cmd.auth,
        device_id="pi-01",
        hardware_class="rpi4b-cpu",
        trust_keys=TRUST,
        now=NOW,
        clock_floor=floor,
        last_seq={next(iter(TRUST)): last_seq},
    )


def rejected(cmd: Command, **kw: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        check(cmd, **kw)
    return info.value.code


def test_a_good_command_to_the_device_or_its_class_passes() -> None:
    check(signed())
    check(signed(target={"class": "rpi4b-cpu"}))


def test_unsigned_is_refused() -> None:
    assert rejected(Command("config", "c-1", ARGS, NOW)) == "unsigned"


def test_unknown_key_is_refused() -> None:
    assert rejected(signed(Ed25519PrivateKey.generate())) == "unknown_key"


def test_tampered_args_break_the_signature() -> None:
    cmd = signed()
    forged = Command(
        cmd.verb, cmd.id, {"loadgen": {"enabled": True, "rate_hz": 500}}, cmd.ts, cmd.auth
    )
    assert rejected(forged) == "bad_signature"


def test_a_command_signed_for_another_verb_is_refused() -> None:
    cmd = signed(verb="bench", args={})
    assert rejected(Command("rollback", cmd.id, {}, cmd.ts, cmd.auth)) == "bad_signature"


def test_another_devices_command_is_refused() -> None:
    assert rejected(signed(target={"device": "pi-02"})) == "wrong_target"
    assert rejected(signed(target={"class": "coral-usb"})) == "wrong_target"


def test_stale_and_future_timestamps_are_refused() -> None:
    assert rejected(signed(ts=NOW - MAX_AGE_S - 1)) == "expired"
    assert rejected(signed(ts=NOW + FUTURE_S + 1)) == "expired"
    assert rejected(signed(ts=0)) == "expired"


def test_the_clock_floor_holds_when_the_device_clock_is_behind() -> None:
    # device wall clock reset to NOW, but it accepted a command at NOW + 1 day before
    assert rejected(signed(ts=NOW), floor=NOW + 86400) == "expired"


def test_replayed_sequence_is_refused() -> None:
    assert rejected(signed(seq=4), last_seq=4) == "replayed"
    assert rejected(signed(seq=3), last_seq=4) == "replayed"


def test_a_deploy_needs_a_command_signature_only_when_it_overrides_gates_or_delegate() -> None:
    assert not needs_signature("deploy", {"manifest": {}, "stream": True})  # the manifest's own
    assert needs_signature("deploy", {"manifest": {}, "gates": {}})
    assert needs_signature("deploy", {"manifest": {}, "delegate": "cpu"})
    assert needs_signature("config", {}) and not needs_signature("state", {})


def _deploy_args(key: Ed25519PrivateKey) -> dict[str, Any]:
    """A deploy of a validly signed manifest whose gates would wave any model through."""
    signed = sign_model(model("digits_fp16"), key, release=30)
    return {"manifest": signed.to_dict(), "gates": {"min_inferences": 0, "min_seconds": 0}}


def test_config_and_bench_values_are_bounded_even_when_signed() -> None:
    for verb, args in (
        ("config", {"loadgen": {"enabled": True, "rate_hz": MAX_LOADGEN_HZ + 1}}),
        ("bench", {"runs": MAX_BENCH_RUNS + 1}),
    ):
        cmd = signed(verb=verb, args=args)
        with pytest.raises(ProtocolError) as info:
            Command.from_json(cmd.to_json(), verb)
        assert info.value.code == "malformed"


# ---- the real agent -------------------------------------------------------------------------


def _send(host: ScriptedHost, cmd: Command) -> str:
    host.publish(Sent(host.topics.cmd(cmd.verb), cmd.to_json(), host.reply_topic, cmd.id.encode()))
    return cmd.id


def _real(key: Ed25519PrivateKey, verb: str, seq: int, **kw: Any) -> Command:
    ts, target = kw.pop("ts", time.time()), kw.pop("target", {"device": "pi-01"})
    cmd_id, args = uuid.uuid4().hex, kw.pop("args", {})
    return Command(verb, cmd_id, args, ts, sign_command(key, verb, cmd_id, args, ts, seq, target))


ATTACKS: dict[str, tuple[Callable[[Ed25519PrivateKey], Command], str]] = {
    "unsigned_rollback": (
        lambda k: Command("rollback", uuid.uuid4().hex, {}, time.time()),
        "unsigned",
    ),
    "foreign_key_rollback": (
        lambda k: _real(Ed25519PrivateKey.generate(), "rollback", 9),
        "unknown_key",
    ),
    "rollback_for_another_device": (
        lambda k: _real(k, "rollback", 9, target={"device": "pi-02"}),
        "wrong_target",
    ),
    # the attacks: an unsigned load generator at 10000 Hz and a 100000-run bench are
    # out of bounds before any signature is looked at; within bounds, unsigned is refused
    "unsigned_config_loadgen_flood": (
        lambda k: Command("config", uuid.uuid4().hex, {"loadgen": {"rate_hz": 10000}}, time.time()),
        "malformed",
    ),
    "unsigned_bench_of_100000_runs": (
        lambda k: Command("bench", uuid.uuid4().hex, {"runs": 100000}, time.time()),
        "malformed",
    ),
    "unsigned_config_within_bounds": (
        lambda k: Command("config", uuid.uuid4().hex, {"loadgen": {"rate_hz": 100}}, time.time()),
        "unsigned",
    ),
    # a genuine manifest with unsigned (or misaddressed) gates that would pass any model
    "unsigned_deploy_gates": (
        lambda k: Command("deploy", uuid.uuid4().hex, _deploy_args(k), time.time()),
        "unsigned",
    ),
    "deploy_gates_signed_for_another_device": (
        lambda k: _real(k, "deploy", 9, args=_deploy_args(k), target={"device": "pi-02"}),
        "wrong_target",
    ),
    "rollback_from_the_past": (lambda k: _real(k, "rollback", 9, ts=0.0), "expired"),
    "rollback_a_year_ahead": (
        lambda k: _real(k, "rollback", 9, ts=time.time() + 365 * 86400),
        "expired",
    ),
}


@pytest.mark.broker
@pytest.mark.runtime
@pytest.mark.parametrize("case", list(ATTACKS))
def test_attack_on_the_real_agent_is_refused_and_changes_nothing(
    case: str, seeded: SeededDevice
) -> None:
    make, code = ATTACKS[case]
    key, old_sha = seeded.key, seeded.old_sha
    agent = seeded.start()
    auth_file = agent.state_dir / "command_auth.json"
    with seeded.host() as host:
        first = _send(host, _real(key, "bench", 1, args={"runs": 5}))  # a good one: seq 1
        assert host.wait_reply(first).status in ("accepted", "ok")
        before = auth_file.read_bytes()
        reply = host.wait_reply(_send(host, make(key)))
        assert (reply.status, reply.code) == ("rejected", code), reply
        assert pointer_sha(agent.state_dir) == old_sha
        assert auth_file.read_bytes() == before
        # the load generator is still off (a signed no-op config reports the applied rate)
        probe = host.wait_reply(_send(host, _real(key, "config", 2)), status="ok")
        assert probe.data["loadgen_rate_hz"] == 0, probe
    assert agent.alive()


@pytest.mark.broker
@pytest.mark.runtime
def test_a_replayed_signed_rollback_is_refused_across_a_restart(seeded: SeededDevice) -> None:
    old_sha = seeded.old_sha
    agent = seeded.start()
    rollback = _real(seeded.key, "rollback", 3)
    with seeded.host() as host:
        reply = host.wait_reply(_send(host, rollback))
        assert reply.code == "no_install", reply  # signature fine: the installer answered
    assert agent.stop() == 0
    before = (agent.state_dir / "command_auth.json").read_bytes()
    agent.start()
    agent.wait_ready()
    with seeded.host() as host:
        reply = host.wait_reply(_send(host, rollback))
        assert (reply.status, reply.code) == ("rejected", "replayed"), reply
    assert pointer_sha(agent.state_dir) == old_sha
    assert (agent.state_dir / "command_auth.json").read_bytes() == before


# ---- the host side: edge-deploy command -------------------------------------------------------


@pytest.mark.broker
@pytest.mark.runtime
def test_edge_deploy_command_signs_config_and_the_agent_applies_it(
    seeded: SeededDevice, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = seeded.start()
    broker = seeded.broker
    base = ["--device", "pi-01", "--broker", broker.url, "--keys", str(keys_dir)]
    args = '{"loadgen": {"enabled": true, "rate_hz": 3}}'
    assert deploy_main(["command", "config", *base, "--args", args]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    second = deploy_main(["command", "config", *base, "--args", args])  # a later seq: accepted
    assert second == 0, capsys.readouterr()
    saved = json.loads((agent.state_dir / "command_auth.json").read_text())
    assert next(iter(saved["seq"].values())) > 0
    capsys.readouterr()
    unsigned = ["command", "config", "--device", "pi-01", "--broker", broker.url]
    assert deploy_main([*unsigned, "--args", args]) == 2  # no key: refused on the host
    assert "must be signed" in capsys.readouterr().err
