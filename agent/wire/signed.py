"""Signed commands: what a host signs and what a device checks, as pure functions.

Every command that changes what a device runs or how it behaves (``SIGNED_VERBS``: rollback,
config, bench) carries an ``auth`` object next to ``id``, ``args`` and ``ts``:

    {"id": "c-42", "args": {...}, "ts": 1764780000.0,
     "auth": {"key_id": "0123456789abcdef", "seq": 17, "target": {"device": "pi-01"},
              "sig": "<base64 Ed25519 signature>"}}

The signature covers the canonical JSON of ``{"verb", "id", "args", "ts", "seq", "target",
"key_id"}``, so the verb (the topic's), the arguments, the time, the sequence number and the
addressee are all bound. ``target`` is ``{"device": ID}`` or ``{"class": HARDWARE_CLASS}``.

:func:`verify_command` refuses, in this order and with these reason codes:
``unsigned`` (no auth), ``malformed``, ``unknown_key``, ``bad_signature``, ``wrong_target``,
``expired`` (``ts`` older than ``MAX_AGE_S`` or more than ``FUTURE_S`` ahead of the device's
time, which is never taken below its clock floor), ``replayed`` (``seq`` not above the last
accepted one for that key). The caller persists the accepted ``(key_id, seq, ts)``
(agent/delivery/cmdguard.py). Read-only verbs (state, rebirth) stay unsigned; a deploy is
covered by its signed manifest, and is signed as a command too when it carries ``gates`` or
``delegate`` (:func:`needs_signature`): unsigned, those could loosen the health check.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import ProtocolError
from agent.wire.codec import canonical_json
from agent.wire.ed25519 import PublicKey
from agent.wire.reasons import Reason

SIGNED_VERBS = frozenset({"rollback", "config", "bench"})
#: ``cmd/deploy`` arguments beside the (signed) manifest that change how a device judges or runs
#: the model: a deploy carrying one of them must be signed like the verbs above.
SIGNED_DEPLOY_ARGS = frozenset({"gates", "delegate"})


def needs_signature(verb: str, args: Mapping[str, Any]) -> bool:
    """Whether ``cmd/<verb>`` with ``args`` must carry a valid ``auth``: the verbs that change
    what a device runs or does, and a deploy whose gates or delegate override the device's."""
    return verb in SIGNED_VERBS or (verb == "deploy" and not SIGNED_DEPLOY_ARGS.isdisjoint(args))


#: A signed command older than this (device time) is refused: it was held back or replayed.
MAX_AGE_S = 600.0
#: ... and one more than this ahead of the device's time (a host clock far ahead, or forged).
FUTURE_S = 120.0


@dataclass(frozen=True)
class Accepted:
    key_id: str
    seq: int
    ts: float


def signed_bytes(
    verb: str, cmd_id: str, args: Mapping[str, Any], ts: float, auth: Mapping[str, Any]
) -> bytes:
    """What the signature covers: the command and its ``auth``'s key_id, seq and target."""
    return canonical_json(
        {
            "verb": verb,
            "id": cmd_id,
            "args": dict(args),
            "ts": ts,
            "seq": auth["seq"],
            "target": dict(auth["target"]),
            "key_id": auth["key_id"],
        }
    )


def sign_command(
    private_key: Any,
    verb: str,
    cmd_id: str,
    args: Mapping[str, Any],
    ts: float,
    seq: int,
    target: Mapping[str, str],
) -> dict[str, Any]:
    """The ``auth`` object for a command (host side; ``private_key``: a `cryptography`
    Ed25519 private key, deploy.keys.load_private)."""
    key_id = PublicKey.of(private_key.public_key()).key_id
    auth: dict[str, Any] = {"key_id": key_id, "seq": seq, "target": dict(target)}
    sig = private_key.sign(signed_bytes(verb, cmd_id, args, float(ts), auth))
    return auth | {"sig": base64.b64encode(sig).decode("ascii")}


def _reject(code: str, message: str, hint: str | None = None) -> ProtocolError:
    return ProtocolError(message, code=code, hint=hint)


def verify_command(
    verb: str,
    cmd_id: str,
    args: Mapping[str, Any],
    ts: float | None,
    auth: Mapping[str, Any] | None,
    *,
    device_id: str,
    hardware_class: str | None,
    trust_keys: Mapping[str, PublicKey],
    now: float,
    clock_floor: float,
    last_seq: Mapping[str, int],
) -> Accepted:
    """Check a command's signature, addressee, time and sequence (see the module docstring)."""
    where = f"cmd/{verb}"
    if auth is None:
        raise _reject(
            Reason.UNSIGNED,
            f"{where} must be signed",
            hint="send it with a host signing key the device trusts (auth: key_id, seq, sig)",
        )
    key_id, seq, target, sig_text = (auth.get(k) for k in ("key_id", "seq", "target", "sig"))
    if (
        not isinstance(key_id, str)
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 1
        or not isinstance(target, dict)
        or not all(isinstance(v, str) for v in target.values())
        or len(target) != 1
        or not isinstance(sig_text, str)
        or not isinstance(ts, int | float)
    ):
        raise _reject(Reason.MALFORMED, f"{where}: auth needs key_id, seq >= 1, target, sig, ts")
    key = trust_keys.get(key_id)
    if key is None:
        raise _reject(Reason.UNKNOWN_KEY, f"{where}: key {key_id} is not trusted here")
    try:
        sig = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise _reject(Reason.MALFORMED, f"{where}: sig is not base64") from None
    if not key.verify(sig, signed_bytes(verb, cmd_id, args, float(ts), auth)):
        raise _reject(Reason.BAD_SIGNATURE, f"{where}: the signature does not match")
    if target != {"device": device_id} and (
        hardware_class is None or target != {"class": hardware_class}
    ):
        raise _reject(
            Reason.WRONG_TARGET,
            f"{where} is addressed to {target}, not to device {device_id} (class {hardware_class})",
        )
    device_now = max(now, clock_floor)
    if not device_now - MAX_AGE_S <= ts <= device_now + FUTURE_S:
        raise _reject(
            Reason.EXPIRED,
            f"{where}: ts {ts} is outside [{device_now - MAX_AGE_S:.0f}, "
            f"{device_now + FUTURE_S:.0f}] (device time {device_now:.0f}, "
            f"-{MAX_AGE_S:.0f} s / +{FUTURE_S:.0f} s)",
            hint="check the host's and the device's clocks (NTP)",
        )
    if seq <= last_seq.get(key_id, 0):
        raise _reject(
            Reason.REPLAYED,
            f"{where}: seq {seq} is not above {last_seq.get(key_id, 0)}, the last accepted",
        )
    return Accepted(key_id, seq, float(ts))
