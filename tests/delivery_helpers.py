"""Shared helpers for the manifest / store / protocol tests, and checks on an agent's state dir."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire.codec import canonical_json
from agent.wire.ed25519 import PublicKey
from agent.wire.manifest import Manifest, SignedManifest
from agent.wire.manifest_signing import model_fields, sign_manifest
from agent.wire.trust import key_id_of

NOW = 1_700_000_000


def new_key() -> tuple[Ed25519PrivateKey, dict[str, PublicKey]]:
    key = Ed25519PrivateKey.generate()
    return key, {key_id_of(key.public_key()): PublicKey.of(key.public_key())}


def model_bytes(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha256(b"seed%d" % seed).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def signed(
    key: Ed25519PrivateKey,
    data: bytes,
    *,
    name: str = "digits",
    release: int = 1,
    chunk_size: int = 1024,
    **extra: Any,
) -> SignedManifest:
    fields: dict[str, Any] = {"name": name, "version": f"1.{release}", "release": release}
    fields.update(model_fields(data, chunk_size))
    fields.setdefault("created", NOW)
    fields.update(extra)
    return sign_manifest(fields, key, now=NOW)


def sign_raw_body(key: Ed25519PrivateKey, body: dict[str, Any]) -> bytes:
    """An envelope whose signature is valid over ANY body (to reach the checks after it)."""
    sig = key.sign(canonical_json(body, allow_floats=False))
    envelope = {
        "manifest": body,
        "sig": base64.b64encode(sig).decode(),
        "key_id": key_id_of(key.public_key()),
    }
    return canonical_json(envelope)


def write_all(store: Any, manifest: Manifest, data: bytes) -> None:
    for r in store.begin(manifest):
        for i in r:
            store.write_chunk(
                manifest.sha256, i, data[i * manifest.chunk_size : (i + 1) * manifest.chunk_size]
            )


def install(store: Any, manifest: Manifest, data: bytes) -> None:
    """The daemon's happy path, minus probe and health gates."""
    store.check_release(manifest)
    write_all(store, manifest, data)
    store.record_release(manifest)
    store.finish(manifest.sha256)
    store.set_trial(manifest.sha256, manifest)
    store.commit_trial()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under root with a content hash (to prove nothing changed)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


# ---- checks on a real agent's state dir -----------------------------------------------------


def store_view(state_dir: Path) -> dict[str, str]:
    """The trusted state a refusal must leave untouched: models, staging, pointers, release
    counters, command sequence numbers (the outbox changes: it carries the event)."""
    return {k: v for k, v in snapshot(state_dir).items() if not k.startswith("outbox")}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_problems(state_dir: Path) -> list[str]:
    """P1's disk invariant: every file in models/ is complete (its name is its sha256), no temp
    files survive a restart, pointers name files that exist."""
    problems = []
    for p in sorted((state_dir / "models").glob("*.tflite")):
        if sha256_file(p) != p.name.split(".")[0]:
            problems.append(f"models/{p.name} does not match its sha256")
    for p in sorted((state_dir / "models").iterdir()):
        if p.name.startswith(".") or p.name.endswith(".part"):
            problems.append(f"partial file models/{p.name}")
    for p in sorted((state_dir / "pointers").iterdir()):
        if p.name.startswith("."):
            problems.append(f"temp file pointers/{p.name}")
            continue
        sha = json.loads(p.read_bytes())["sha256"]
        if not (state_dir / "models" / f"{sha}.tflite").is_file():
            problems.append(f"pointer {p.name} names missing model {sha}")
    for root, _dirs, files in os.walk(state_dir):
        rel = Path(root).relative_to(state_dir)
        for f in files:
            if f.endswith(".part") and rel.parts[:1] != ("staging",):
                problems.append(f"partial file {rel / f} outside staging/")
    return problems


def model_files(state_dir: Path) -> set[str]:
    return {p.name.split(".")[0] for p in (state_dir / "models").glob("*.tflite")}


def pointer_sha(state_dir: Path, which: str = "current") -> str | None:
    try:
        return str(json.loads((state_dir / "pointers" / which).read_bytes())["sha256"])
    except FileNotFoundError:
        return None
