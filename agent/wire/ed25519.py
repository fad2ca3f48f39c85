"""Ed25519 public keys and signature verification for the device.

The agent verifies one signature per deployment. Loading the `cryptography` package for that
costs ~7.5 MB of resident memory (its wheel carries a second, static OpenSSL), a seventh of the
agent's budget on a 512 MB Pi Zero 2 W. The MQTT client already loads the system's OpenSSL for
TLS (`import ssl`), and OpenSSL >= 1.1.1 verifies Ed25519 (`EVP_DigestVerify`), so the agent
calls that through ctypes. The backend proves itself on the RFC 8032 test vectors before it is
used (a good signature verifies, a one-bit change does not); when the library is missing, too
old or fails that test, `cryptography` is used instead (a base dependency: the host signs with
it). `backend_name()` says which one is in use; `edge-agent probe --json` reports it.

Verification only: nothing secret passes through here, so constant time does not matter.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError

log = logging.getLogger(__name__)

RAW_LEN = 32
SIG_LEN = 64
# DER of SubjectPublicKeyInfo { AlgorithmIdentifier { 1.3.101.112 (Ed25519) }, BIT STRING }
# followed by the 32 raw key bytes (RFC 8410 section 4).
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
NID_ED25519 = 1087  # EVP_PKEY_ED25519 in OpenSSL's obj_mac.h

# RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte)
_VECTORS = (
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
        "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
)

Verify = Callable[[bytes, bytes, bytes], bool]  # (raw public key, signature, message) -> ok


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: its 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != RAW_LEN:
            raise ValueError(f"an Ed25519 public key is {RAW_LEN} bytes, got {len(self.raw)}")

    @property
    def key_id(self) -> str:
        """First 16 hex characters of sha256 over the raw key (the manifests' ``key_id``)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's valid Ed25519 signature of ``message``."""
        if len(signature) != SIG_LEN:
            return False
        return _backend()[1](self.raw, bytes(signature), bytes(message))

    def pem(self) -> bytes:
        body = base64.encodebytes(SPKI_PREFIX + self.raw).decode("ascii").replace("\n", "")
        return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n".encode("ascii")

    @classmethod
    def of(cls, key: Any) -> PublicKey:
        """From a PublicKey or a `cryptography` Ed25519 public key."""
        if isinstance(key, PublicKey):
            return key
        return cls(bytes(key.public_bytes_raw()))


def parse_public_key(data: bytes) -> PublicKey:
    """A PEM SubjectPublicKeyInfo Ed25519 key (``-----BEGIN PUBLIC KEY-----``), or base64 of
    the raw 32 bytes. Raises ConfigError naming what is wrong."""
    text = data.strip()
    hint = "use the .pub file written by `edge-deploy keys init`"
    try:
        if text.startswith(b"-----BEGIN"):
            lines = text.splitlines()
            if lines[0].strip() != b"-----BEGIN PUBLIC KEY-----" or not lines[-1].startswith(
                b"-----END PUBLIC KEY-----"
            ):
                raise ValueError(
                    f"a PEM {lines[0].strip()[11:-5].decode(errors='replace')!r}"
                    " block, not a PUBLIC KEY"
                )
            der = base64.b64decode(b"".join(x.strip() for x in lines[1:-1]), validate=True)
            if len(der) != len(SPKI_PREFIX) + RAW_LEN or not der.startswith(SPKI_PREFIX):
                raise ValueError("the PEM holds a public key of another algorithm")
            return PublicKey(der[len(SPKI_PREFIX) :])
        raw = base64.b64decode(text, validate=True)
        return PublicKey(raw)
    except (ValueError, binascii.Error, IndexError) as exc:
        raise ConfigError(f"not an Ed25519 public key: {exc}", hint=hint) from exc


# ---- backends ---------------------------------------------------------------------------------
def _libcrypto_path() -> str | None:
    """The libcrypto the ``ssl`` module already mapped into this process, else the system's."""
    import ssl  # noqa: F401 - paho imports it anyway; it maps libcrypto

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").partition("/")[2]
                if path and "libcrypto" in path.rsplit("/", 1)[-1]:
                    return "/" + path
    except OSError:
        pass
    return ctypes.util.find_library("crypto")


def _libcrypto_verify() -> Verify:
    path = _libcrypto_path()
    if path is None:
        raise OSError("no libcrypto found")
    lib = ctypes.CDLL(path)
    vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    new_key = lib.EVP_PKEY_new_raw_public_key
    new_key.argtypes, new_key.restype = [ctypes.c_int, vp, cp, sz], vp
    free_key = lib.EVP_PKEY_free
    free_key.argtypes, free_key.restype = [vp], None
    new_ctx = lib.EVP_MD_CTX_new
    new_ctx.argtypes, new_ctx.restype = [], vp
    free_ctx = lib.EVP_MD_CTX_free
    free_ctx.argtypes, free_ctx.restype = [vp], None
    init = lib.EVP_DigestVerifyInit
    init.argtypes, init.restype = [vp, vp, vp, vp, vp], ctypes.c_int
    verify = lib.EVP_DigestVerify
    verify.argtypes, verify.restype = [vp, cp, sz, cp, sz], ctypes.c_int
    clear = lib.ERR_clear_error
    clear.argtypes, clear.restype = [], None

    def run(raw: bytes, sig: bytes, msg: bytes) -> bool:
        key = new_key(NID_ED25519, None, raw, len(raw))
        if not key:
            clear()
            return False
        ctx = new_ctx()
        try:
            if not ctx or init(ctx, None, None, None, key) != 1:
                return False
            return bool(verify(ctx, sig, len(sig), msg, len(msg)) == 1)
        finally:
            if ctx:
                free_ctx(ctx)
            free_key(key)
            clear()  # leave no error on this thread's OpenSSL queue (the ssl module shares it)

    return run


def _cryptography_verify() -> Verify:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def run(raw: bytes, sig: bytes, msg: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, msg)
        except (InvalidSignature, ValueError):
            return False
        return True

    return run


BACKENDS: dict[str, Callable[[], Verify]] = {
    "libcrypto": _libcrypto_verify,
    "cryptography": _cryptography_verify,
}


def self_test(run: Verify) -> None:
    """Raise AssertionError unless ``run`` accepts the RFC 8032 vectors and rejects them with
    one bit changed in the signature, the message or the key."""
    for key_hex, msg_hex, sig_hex in _VECTORS:
        key, msg, sig = bytes.fromhex(key_hex), bytes.fromhex(msg_hex), bytes.fromhex(sig_hex)
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        other_key = bytes([key[0] ^ 2]) + key[1:]
        if not run(key, sig, msg):
            raise AssertionError("a valid RFC 8032 signature does not verify")
        if run(key, flipped, msg) or run(key, sig, msg + b"\x00") or run(other_key, sig, msg):
            raise AssertionError("an altered RFC 8032 signature verifies")


@functools.cache
def _backend() -> tuple[str, Verify]:
    """The first backend that passes the self-test (chosen once per process)."""
    problems = []
    for name, make in BACKENDS.items():
        try:
            run = make()
            self_test(run)
        except (OSError, AttributeError, ImportError, AssertionError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        if problems:
            log.info("Ed25519 verification through %s (%s)", name, "; ".join(problems))
        return name, run
    raise RuntimeError(
        "no working Ed25519 verifier: "
        + "; ".join(problems)
        + " (install OpenSSL >= 1.1.1 or `pip install cryptography`)"
    )


def backend_name() -> str:
    """ "libcrypto" or "cryptography": the backend verifying signatures in this process."""
    return _backend()[0]
