"""Signed manifests: RELIABILITY P3 (signature first), P5 (expiry), P12 (fuzz), key files."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.delivery.store import ModelStore
from agent.errors import ConfigError, ManifestError
from agent.wire.codec import MAX_MANIFEST_BYTES, canonical_json
from agent.wire.manifest import DEFAULT_CHUNK_SIZE, SCHEMA
from agent.wire.manifest_signing import verify_manifest
from agent.wire.trust import key_id_of, load_trust_keys, public_key_pem
from deploy import keys
from tests.delivery_helpers import NOW, model_bytes, new_key, sign_raw_body, signed, snapshot

DATA = model_bytes(5000)


def codes(raw: Any, trust: Any, now: float = NOW + 1) -> str:
    with pytest.raises(ManifestError) as info:
        verify_manifest(raw, trust, now)
    return info.value.code


def test_signed_manifest_round_trips_with_every_field():
    key, trust = new_key()
    sm = signed(
        key, DATA, release=5, variant={"recipe": "int8", "dtype": "int8", "delegate": "cpu"}
    )
    m = verify_manifest(sm.to_json(), trust, NOW + 1)
    assert m == sm.manifest
    assert (m.name, m.release, m.size, m.chunk_size, m.chunk_count) == ("digits", 5, 5000, 1024, 5)
    assert m.chunk_length(4) == 5000 - 4 * 1024
    assert m.variant.recipe == "int8" and m.schema == SCHEMA
    assert m.key_id == key_id_of(key.public_key()) == sm.key_id
    assert m.expires == NOW + 7 * 24 * 3600
    # the parsed envelope object is accepted too (the deploy command carries it as JSON)
    assert verify_manifest(sm.to_dict(), trust, NOW + 1) == m


def test_default_chunk_size_is_64_kib():
    key, _ = new_key()
    from agent.wire.manifest_signing import model_fields, sign_manifest

    fields = {"name": "m", "version": "1", "release": 1, **model_fields(DATA)}
    del fields["chunk_size"]
    assert sign_manifest(fields, key).manifest.chunk_size == DEFAULT_CHUNK_SIZE == 65536


def test_signature_covers_canonical_json_of_the_manifest_object():
    key, trust = new_key()
    sm = signed(key, DATA)
    text = sm.to_json().decode()
    assert " " not in text and text.index('"key_id"') < text.index('"manifest"') < text.index(
        '"sig"'
    )
    # re-serialised with other whitespace and key order: still the same signed object
    pretty = json.dumps(json.loads(text), indent=2, sort_keys=False).encode()
    assert verify_manifest(pretty, trust, NOW + 1) == sm.manifest


# --- P3: each attack gets its own reason code, before anything else is looked at -----------


def test_unsigned_manifest_is_malformed():
    key, trust = new_key()
    body = signed(key, DATA).manifest.to_dict()
    assert codes(canonical_json(body), trust) == "malformed"
    assert (
        codes(canonical_json({"manifest": body, "key_id": key_id_of(key.public_key())}), trust)
        == "malformed"
    )


def test_wrong_key_is_unknown_key():
    key, _ = new_key()
    _, other_trust = new_key()
    assert codes(signed(key, DATA).to_json(), other_trust) == "unknown_key"


def test_foreign_key_claiming_a_trusted_key_id_is_bad_signature():
    key, trust = new_key()
    attacker, _ = new_key()
    env = signed(attacker, DATA).to_dict()
    env["key_id"] = env["manifest"]["key_id"] = key_id_of(key.public_key())
    assert codes(canonical_json(env), trust) == "bad_signature"


@pytest.mark.parametrize(
    "field,value",
    [("release", 99), ("sha256", "0" * 64), ("size", 4999), ("name", "other"), ("expires", 2**40)],
)
def test_tampered_manifest_field_is_bad_signature(field, value):
    key, trust = new_key()
    env = signed(key, DATA).to_dict()
    env["manifest"][field] = value
    assert codes(canonical_json(env), trust) == "bad_signature"


def test_tampered_signature_is_bad_signature():
    key, trust = new_key()
    env = signed(key, DATA).to_dict()
    sig = bytearray(base64.b64decode(env["sig"]))
    sig[10] ^= 0x01
    env["sig"] = base64.b64encode(bytes(sig)).decode()
    assert codes(canonical_json(env), trust) == "bad_signature"
    env["sig"] = base64.b64encode(bytes(sig[:32])).decode()  # truncated
    assert codes(canonical_json(env), trust) == "bad_signature"
    env["sig"] = "not base64 !!"
    assert codes(canonical_json(env), trust) == "malformed"


def test_oversize_payload_is_refused_before_parsing():
    _, trust = new_key()
    assert codes(b"{" * (MAX_MANIFEST_BYTES + 1), trust) == "too_large"
    assert codes(b"\xff\xfe not json", trust) == "malformed"
    assert codes(b"[" * 10_000 + b"]" * 10_000, trust) == "malformed"


def test_signature_is_checked_before_schema_and_expiry():
    key, trust = new_key()
    # expired AND tampered: the signature failure wins
    env = signed(key, DATA, expires=NOW + 10).to_dict()
    env["manifest"]["name"] = "../../etc/passwd"
    assert codes(canonical_json(env), trust, now=NOW + 100) == "bad_signature"


def test_schema_is_checked_after_a_valid_signature():
    key, trust = new_key()
    body = signed(key, DATA).manifest.to_dict()
    for field, value in [
        ("name", "../../etc/passwd"),
        ("name", "a/b"),
        ("name", ".hidden"),
        ("name", ""),
        ("sha256", "ABC"),
        ("size", 0),
        ("size", True),
        ("chunk_size", 10),
        ("chunks", body["chunks"][:-1]),
        ("release", -1),
        ("expires", NOW - 5),
        ("key_id", "0" * 16),
        ("schema", "other/1"),
    ]:
        assert codes(sign_raw_body(key, {**body, field: value}), trust) == "invalid", field
    assert codes(sign_raw_body(key, {**body, "extra": 1}), trust) == "invalid"
    # a float cannot be canonicalised: refused before the signature check
    assert (
        codes(sign_raw_body(key, body).replace(b'"size":5000', b'"size":5000.0'), trust)
        == "malformed"
    )


def test_lone_surrogate_in_a_trusted_envelope_is_malformed():
    key, trust = new_key()
    kid = key_id_of(key.public_key()).encode()
    raw = b'{"manifest": {"name": "\\ud800"}, "sig": "AA==", "key_id": "%s"}' % kid
    assert codes(raw, trust) == "malformed"


def test_duplicate_keys_are_malformed():
    key, trust = new_key()
    raw = signed(key, DATA).to_json()
    assert codes(raw.replace(b'{"key_id"', b'{"key_id":"x","key_id"', 1), trust) == "malformed"


# --- P5: freeze / staleness ----------------------------------------------------------------


def test_expired_manifest_is_refused_at_and_after_expiry():
    key, trust = new_key()
    raw = signed(key, DATA, expires=NOW + 60).to_json()
    assert verify_manifest(raw, trust, NOW + 59).expires == NOW + 60
    assert codes(raw, trust, now=NOW + 60) == "expired"
    assert codes(raw, trust, now=NOW + 10**6) == "expired"


# --- P3 end to end at the store: rejections leave the state directory unchanged ------------


def accept(store: ModelStore, raw: bytes, trust: Any, now: float) -> None:
    """The daemon's acceptance sequence (compat check left out)."""
    m = verify_manifest(raw, trust, now)
    if store.check_release(m) == "replayed":
        return
    store.begin(m)
    store.record_release(m)


def test_every_rejection_leaves_the_state_dir_unchanged(tmp_path: Path):
    key, trust = new_key()
    attacker, _ = new_key()
    store = ModelStore(tmp_path / "state")
    accept(store, signed(key, DATA, release=3).to_json(), trust, NOW + 1)
    before = snapshot(tmp_path)
    tampered = signed(key, DATA, release=4).to_dict()
    tampered["manifest"]["release"] = 9
    attacks = {
        "malformed": canonical_json(signed(key, DATA, release=4).manifest.to_dict()),
        "unknown_key": signed(attacker, DATA, release=4).to_json(),
        "bad_signature": canonical_json(tampered),
        "expired": signed(key, DATA, release=4, expires=NOW + 1).to_json(),
        "rollback": signed(key, DATA, release=2).to_json(),
        "invalid": sign_raw_body(key, {**signed(key, DATA).manifest.to_dict(), "name": "../x"}),
    }
    for expected, raw in attacks.items():
        with pytest.raises(ManifestError) as info:
            accept(store, raw, trust, NOW + 2)
        assert info.value.code == expected
        assert snapshot(tmp_path) == before, expected
    assert store.releases() == {"digits": 3}


# --- P12: arbitrary input raises only ManifestError ----------------------------------------

_KEY, _TRUST = new_key()
_BODY = signed(_KEY, DATA).manifest.to_dict()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_manifest_error(raw):
    with pytest.raises(ManifestError):
        verify_manifest(raw, _TRUST, NOW)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_BODY)), json_values)
def test_validly_signed_garbage_fields_raise_only_invalid(field, value):
    raw = sign_raw_body(_KEY, {**_BODY, field: value})
    try:
        m = verify_manifest(raw, _TRUST, NOW + 1)
    except ManifestError as exc:
        assert exc.code in {"invalid", "expired"}
    else:
        assert m.to_dict()[field] == value or field in {"variant", "requirements"}


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_envelopes_raise_only_manifest_error(value):
    for raw in (
        canonical_json(value),
        canonical_json({"manifest": value, "sig": "AA==", "key_id": "0" * 16}),
        json.dumps(
            {"manifest": {"x": value}, "sig": "AA==", "key_id": key_id_of(_KEY.public_key())}
        ).encode(),
    ):
        with pytest.raises(ManifestError):
            verify_manifest(raw, _TRUST, NOW)


# --- keys -----------------------------------------------------------------------------------


def test_init_keys_writes_a_private_key_only_the_owner_can_read(tmp_path: Path):
    pub = keys.init_keys(tmp_path / "k")
    assert pub == tmp_path / "k" / "edgeloop.pub"
    mode = stat.S_IMODE(os.stat(tmp_path / "k" / "edgeloop.key").st_mode)
    assert mode == 0o600
    shown = keys.show(tmp_path / "k")
    priv = keys.load_private(tmp_path / "k")
    assert shown["key_id"] == key_id_of(priv.public_key()) == key_id_of(keys.load_public(pub))
    assert shown["public_key_path"] == str(pub.resolve())
    sm = signed(priv, DATA)
    assert verify_manifest(sm.to_json(), load_trust_keys([pub]), NOW + 1) == sm.manifest


def test_init_keys_refuses_to_overwrite(tmp_path: Path):
    keys.init_keys(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="overwrite"):
        keys.init_keys(tmp_path)
    assert snapshot(tmp_path) == before


def test_trust_keys_load_from_pem_or_base64_and_reject_garbage(tmp_path: Path):
    key, trust = new_key()
    raw = key.public_key().public_bytes_raw()
    (tmp_path / "a.pem").write_bytes(public_key_pem(key.public_key()))
    (tmp_path / "b.b64").write_text(base64.b64encode(raw).decode() + "\n")
    assert load_trust_keys([tmp_path / "a.pem"]).keys() == trust.keys()
    assert load_trust_keys([tmp_path / "b.b64"]).keys() == trust.keys()
    (tmp_path / "bad").write_text("hello")
    with pytest.raises(ConfigError):
        load_trust_keys([tmp_path / "bad"])
    with pytest.raises(ConfigError):
        load_trust_keys([tmp_path / "missing"])
    with pytest.raises(ConfigError):
        keys.load_private(tmp_path)
