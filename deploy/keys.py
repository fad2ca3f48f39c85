"""Host signing keys (Ed25519) for model manifests.

A key directory holds ``edgeloop.key`` (private, PKCS#8 PEM, mode 0600) and ``edgeloop.pub``
(public, SubjectPublicKeyInfo PEM): give the .pub file to every agent as a trust key
(``edge-agent run --trust-key DIR/edgeloop.pub``). The key id is the first 16 hex characters of
sha256 over the raw 32-byte public key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import ConfigError
from agent.wire.ed25519 import PublicKey
from agent.wire.trust import key_id_of, load_public_key, public_key_pem

PRIVATE_NAME = "edgeloop.key"
PUBLIC_NAME = "edgeloop.pub"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never overwrite)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keys(directory: str | Path) -> Path:
    """Generate a key pair into ``directory`` (created 0700 if absent); returns the public key
    path. Refuses (ConfigError) if either file already exists."""
    d = Path(directory)
    private, public = d / PRIVATE_NAME, d / PUBLIC_NAME
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite existing key files: {', '.join(existing)}",
            hint="use `edge-deploy keys show` to see the key, or choose another --dir",
        )
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(private, pem, 0o600)
        _write_new(public, public_key_pem(key.public_key()), 0o644)
    except FileExistsError as exc:
        raise ConfigError(f"refusing to overwrite {exc.filename}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write keys into {d}: {exc}") from exc
    return public


def load_private(directory: str | Path) -> Ed25519PrivateKey:
    path = Path(directory) / PRIVATE_NAME
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the signing key {path}: {exc}",
            hint="create one with `edge-deploy keys init --dir DIR`",
        ) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public(path: str | Path) -> PublicKey:
    """A public key file (PEM or base64 of the raw 32 bytes); a directory means its .pub."""
    p = Path(path)
    return load_public_key(p / PUBLIC_NAME if p.is_dir() else p)


def show(directory: str | Path) -> dict[str, Any]:
    """``{"key_id", "public_key_path", "private_key_path", "public_key_pem"}``; checks that the
    two files belong together."""
    d = Path(directory)
    public = load_public(d / PUBLIC_NAME)
    key_id = key_id_of(public)
    private_path = d / PRIVATE_NAME
    if private_path.exists() and key_id_of(load_private(d).public_key()) != key_id:
        raise ConfigError(f"{private_path} and {d / PUBLIC_NAME} are not a key pair")
    return {
        "key_id": key_id,
        "public_key_path": str((d / PUBLIC_NAME).resolve()),
        "private_key_path": str(private_path.resolve()) if private_path.exists() else None,
        "public_key_pem": public_key_pem(public).decode("ascii"),
    }
