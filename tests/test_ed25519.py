"""agent.wire.ed25519: the device's signature verifier (system libcrypto through ctypes, with
`cryptography` as the fallback), checked against `cryptography`'s signer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.wire import ed25519
from agent.wire.ed25519 import BACKENDS, PublicKey, parse_public_key, self_test

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_choice() -> Iterator[None]:
    ed25519._backend.cache_clear()
    yield
    ed25519._backend.cache_clear()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_passes_the_rfc8032_self_test(name: str) -> None:
    self_test(BACKENDS[name]())


def test_the_system_libcrypto_is_the_backend_here(fresh_choice: None) -> None:
    # Debian 12 and Raspberry Pi OS 12 ship OpenSSL 3: no second OpenSSL in the agent
    assert ed25519.backend_name() == "libcrypto"


def test_a_verifier_that_accepts_everything_fails_the_self_test() -> None:
    with pytest.raises(AssertionError, match="altered"):
        self_test(lambda _k, _s, _m: True)
    with pytest.raises(AssertionError, match="does not verify"):
        self_test(lambda _k, _s, _m: False)


def test_a_broken_backend_falls_back_to_the_next(
    fresh_choice: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> ed25519.Verify:
        return lambda _k, _s, _m: True

    def missing() -> ed25519.Verify:
        raise OSError("no libcrypto found")

    fallback = BACKENDS["cryptography"]
    monkeypatch.setattr(
        ed25519, "BACKENDS", {"broken": broken, "missing": missing, "cryptography": fallback}
    )
    assert ed25519.backend_name() == "cryptography"
    ed25519._backend.cache_clear()
    monkeypatch.setattr(ed25519, "BACKENDS", {"broken": broken, "missing": missing})
    with pytest.raises(RuntimeError, match=r"broken: an altered.*missing: no libcrypto"):
        ed25519.backend_name()


@settings(max_examples=60, deadline=None)
@given(
    message=st.binary(max_size=2048),
    bit=st.integers(0, 511),
    seed=st.binary(min_size=32, max_size=32),
)
def test_backends_agree_with_the_signer(message: bytes, bit: int, seed: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    raw = PublicKey.of(key.public_key()).raw
    sig = key.sign(message)
    bad_sig = bytearray(sig)
    bad_sig[bit // 8] ^= 1 << (bit % 8)
    for make in BACKENDS.values():
        verify = make()
        assert verify(raw, sig, message)
        assert not verify(raw, bytes(bad_sig), message)
        assert not verify(raw, sig, message + b"x")


def test_public_key_verify_rejects_wrong_lengths() -> None:
    key = Ed25519PrivateKey.generate()
    pub = PublicKey.of(key.public_key())
    sig = key.sign(b"m")
    assert pub.verify(sig, b"m")
    assert not pub.verify(sig[:-1], b"m")
    assert not pub.verify(sig + b"\x00", b"m")
    with pytest.raises(ValueError, match="32 bytes"):
        PublicKey(b"\x01" * 31)


def test_pem_round_trip_matches_cryptography() -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ours = PublicKey.of(pub)
    assert ours.pem() == pem
    assert parse_public_key(pem) == ours
    assert parse_public_key(pem.replace(b"\n", b"\r\n") + b"\n\n") == ours
    import base64

    assert parse_public_key(base64.b64encode(ours.raw)) == ours


def test_other_keys_are_refused_with_a_clear_error() -> None:
    rsa_pem = (
        rsa.generate_private_key(65537, 1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="another algorithm") as info:
        parse_public_key(rsa_pem)
    assert "keys init" in (info.value.hint or "")
    private_pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError, match="'PRIVATE KEY' block"):
        parse_public_key(private_pem)
    with pytest.raises(ConfigError, match="32 bytes"):
        parse_public_key(b"AAAA")
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        parse_public_key(b"not base64 at all!")


def test_the_agent_verifies_without_loading_cryptography() -> None:
    """The daemon's modules and a real verification leave `cryptography` unloaded (~7.5 MB)."""
    code = (
        "import sys, agent.service, agent.wire.manifest\n"
        "from agent.wire.ed25519 import backend_name\n"
        "print(backend_name(), 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True, timeout=60)  # fmt: skip
    assert out.stdout.split() == ["libcrypto", "False"], out.stderr
