"""Trust keys: the host's Ed25519 public keys a device accepts signatures from, and their ids."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.wire.ed25519 import PublicKey, parse_public_key


def key_id_of(public_key: Any) -> str:
    """First 16 hex characters of sha256 over the raw 32-byte public key (a PublicKey or a
    `cryptography` Ed25519 public key)."""
    return PublicKey.of(public_key).key_id


def public_key_pem(public_key: Any) -> bytes:
    """SubjectPublicKeyInfo PEM of a PublicKey or a `cryptography` Ed25519 public key."""
    return PublicKey.of(public_key).pem()


def load_public_key(path: str | Path) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read trust key {path}: {exc}") from exc
    try:
        return parse_public_key(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from exc


def load_trust_keys(paths: Iterable[str | Path]) -> dict[str, PublicKey]:
    """key_id -> public key, for verify_manifest."""
    keys = (load_public_key(p) for p in paths)
    return {key_id_of(k): k for k in keys}
