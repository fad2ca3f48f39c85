"""Signing (host) and verification (device) of model manifests, with Ed25519.

Envelope (the ``manifest`` argument of ``cmd/deploy``)::

    {"manifest": {...fields...}, "sig": "<base64 Ed25519 signature>", "key_id": "<16 hex>"}

The signature covers the canonical JSON bytes (agent.wire.codec.canonical_json, no floats) of the
``manifest`` object exactly as received. ``verify_manifest`` runs its checks in a fixed order and
stops at the first failure, raising ManifestError with the reason code of that check:

1. size cap on the raw payload           -> "too_large"
2. UTF-8 JSON parse                      -> "malformed"
3. envelope shape (3 keys, types, base64) -> "malformed"
4. key id among the trusted keys         -> "unknown_key"
5. Ed25519 signature over the canonical bytes of the manifest object -> "bad_signature"
6. schema of the (now authenticated) manifest fields -> "invalid"
7. expiry (``now >= expires``)            -> "expired"

Target ("wrong_target"), slot ("wrong_slot") and its release counter ("replayed"/"rollback"),
compatibility ("incompatible") and disk space ("no_space") are checked after this by the daemon
with agent.delivery.counters, agent.delivery.store and agent.runtime.compat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ManifestError, ProtocolError
from agent.wire.codec import MAX_MANIFEST_BYTES, canonical_json, parse_json_object
from agent.wire.ed25519 import PublicKey
from agent.wire.manifest import (
    DEFAULT_CHUNK_SIZE,
    KEY_ID_RE,
    SCHEMA,
    Manifest,
    Requirements,
    SignedManifest,
    Variant,
)
from agent.wire.reasons import Reason
from agent.wire.trust import key_id_of

if (
    TYPE_CHECKING
):  # the host signs with `cryptography`; the device only verifies (agent.wire.ed25519)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_TTL_S = 7 * 24 * 3600


def model_fields(
    source: bytes | str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> dict[str, Any]:
    """sha256, size, chunk_size and per-chunk sha256 of a model (bytes or a file path)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    chunks = [
        hashlib.sha256(data[i : i + chunk_size]).hexdigest()
        for i in range(0, len(data), chunk_size)
    ]
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "chunk_size": chunk_size,
        "chunks": chunks,
    }


def sign_manifest(
    fields: Mapping[str, Any], private_key: Ed25519PrivateKey, *, now: float | None = None
) -> SignedManifest:
    """Complete ``fields`` (defaults: chunk_size, created=now, expires=created+7 days, key_id,
    variant, requirements), validate them and sign. Raises ManifestError("invalid")."""
    key_id = key_id_of(private_key.public_key())
    obj: dict[str, Any] = dict(fields)
    if obj.get("key_id", key_id) != key_id:
        raise ManifestError(f"key_id {obj['key_id']!r} is not this key's id {key_id}")
    created = obj.setdefault("created", int(time.time() if now is None else now))
    if isinstance(created, int) and not isinstance(created, bool):
        obj.setdefault("expires", created + DEFAULT_TTL_S)
    obj.setdefault("chunk_size", DEFAULT_CHUNK_SIZE)
    obj.setdefault("variant", Variant().to_dict())
    obj.setdefault("requirements", Requirements().to_dict())
    obj.update(schema=SCHEMA, key_id=key_id)
    try:
        canonical_json(obj, allow_floats=False)
    except ProtocolError as exc:
        raise ManifestError(f"manifest fields: {exc.message}", code=Reason.INVALID) from exc
    manifest = Manifest.from_dict(obj)
    sig = private_key.sign(manifest.canonical_bytes())
    return SignedManifest(manifest, base64.b64encode(sig).decode("ascii"), key_id)


def verify_manifest(
    raw: bytes | str | Mapping[str, Any],
    trust_keys: Mapping[str, PublicKey],
    now: float | None = None,
    *,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> Manifest:
    """Authenticate and validate a signed manifest envelope (checks in the module docstring's
    order). ``raw`` is the envelope as bytes/str, or the already-parsed envelope object (it is
    re-encoded so the size cap still applies). Returns the Manifest or raises ManifestError."""
    data = _as_bytes(raw)
    if len(data) > max_bytes:
        raise ManifestError(
            f"manifest of {len(data)} bytes exceeds the {max_bytes}-byte limit",
            code=Reason.TOO_LARGE,
        )
    try:
        envelope = parse_json_object(data, max_bytes=max_bytes, what="manifest")
    except ProtocolError as exc:
        raise ManifestError(exc.message, code=exc.code) from exc
    body, sig, key_id = _envelope(envelope)
    key = trust_keys.get(key_id)
    if key is None:
        raise ManifestError(
            f"manifest signed by unknown key {key_id}",
            code=Reason.UNKNOWN_KEY,
            hint="add the host's public key to the agent's trust keys",
        )
    try:
        signed = canonical_json(body, allow_floats=False)
    except ProtocolError as exc:
        raise ManifestError(
            f"manifest is not canonical JSON: {exc.message}", code="malformed"
        ) from exc
    if not PublicKey.of(key).verify(sig, signed):
        raise ManifestError("manifest signature does not verify", code=Reason.BAD_SIGNATURE)
    manifest = Manifest.from_dict(body)
    if manifest.key_id != key_id:
        raise ManifestError("manifest key_id differs from the envelope's key_id")
    when = time.time() if now is None else now
    if when >= manifest.expires:
        raise ManifestError(
            f"manifest for {manifest.name} r{manifest.release} expired at {manifest.expires}"
            f" (now {int(when)})",
            code=Reason.EXPIRED,
            hint="sign a fresh manifest (and check the device clock)",
        )
    return manifest


def _as_bytes(raw: bytes | str | Mapping[str, Any]) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="surrogatepass")
    try:
        return canonical_json(dict(raw))
    except (ProtocolError, TypeError, ValueError) as exc:
        raise ManifestError(
            f"manifest envelope cannot be encoded: {exc}", code="malformed"
        ) from exc


def _envelope(obj: Any) -> tuple[dict[str, Any], bytes, str]:
    if not isinstance(obj, dict) or set(obj) != {"manifest", "sig", "key_id"}:
        raise ManifestError(
            'manifest envelope must be {"manifest": {...}, "sig": ..., "key_id": ...}',
            code=Reason.MALFORMED,
        )
    body, sig, key_id = obj["manifest"], obj["sig"], obj["key_id"]
    if not isinstance(body, dict) or not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise ManifestError("manifest envelope fields have the wrong types", code="malformed")
    if not isinstance(sig, str) or len(sig) > 128:
        raise ManifestError("manifest signature must be a base64 string", code="malformed")
    try:
        sig_bytes = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError("manifest signature is not base64", code="malformed") from exc
    return body, sig_bytes, key_id
