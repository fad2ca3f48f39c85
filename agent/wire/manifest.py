"""Model manifests: what a model is (:class:`Manifest`, its :class:`Variant` and
:class:`Requirements`), their canonical JSON and the schema check of their fields.

A manifest travels signed (:class:`SignedManifest`, the ``manifest`` argument of ``cmd/deploy``);
signing on the host and the device's verification are agent.wire.manifest_signing's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ManifestError
from agent.wire.codec import MAX_CHUNK_DATA, canonical_json
from agent.wire.reasons import Reason
from agent.wire.topics import ID_PATTERN, valid_id, valid_sha256

SCHEMA = "edgeloop.manifest/1"
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 64
MAX_MODEL_SIZE = 1 << 34
MAX_INT = 2**53
#: The one model slot a device serves unless its config names another (``slot``), and the slot
#: ``edge-deploy push`` names unless told (``--slot``).
DEFAULT_SLOT = "main"
_OPTIONAL = frozenset({"slot", "targets"})

_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._:+-]{1,64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_FIELDS = frozenset(
    {
        "schema",
        "name",
        "version",
        "release",
        "sha256",
        "size",
        "chunk_size",
        "chunks",
        "variant",
        "requirements",
        "created",
        "expires",
        "key_id",
    }
)


@dataclass(frozen=True)
class Variant:
    recipe: str = "unknown"  # "fp32", "int8", "edgetpu", ...
    dtype: str = "unknown"  # quantization: "fp32"|"fp16"|"dynamic-int8"|"int8"|"int16x8"|"mixed"
    delegate: str = "auto"  # "auto"|"cpu"|"edgetpu"

    def to_dict(self) -> dict[str, str]:
        return {"recipe": self.recipe, "dtype": self.dtype, "delegate": self.delegate}


@dataclass(frozen=True)
class Requirements:
    accelerator: str | None = None  # "edgetpu" when the model needs one
    runtimes: tuple[tuple[str, str], ...] = ()  # (runtime, min version) pairs that can load it
    operators: tuple[tuple[str, int], ...] = ()  # (builtin or custom op name, version)
    memory_mb: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "runtimes": [{"runtime": r, "min_version": v} for r, v in self.runtimes],
            "operators": [{"name": n, "version": v} for n, v in self.operators],
            "memory_mb": self.memory_mb,
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    release: int
    sha256: str
    size: int
    chunks: tuple[str, ...]
    created: int
    expires: int
    key_id: str
    chunk_size: int = DEFAULT_CHUNK_SIZE
    variant: Variant = field(default_factory=Variant)
    requirements: Requirements = field(default_factory=Requirements)
    schema: str = SCHEMA
    #: The model slot this manifest fills. A device serves one slot (its config ``slot``,
    #: default :data:`DEFAULT_SLOT`), refuses a manifest naming another one and keeps the
    #: anti-rollback counter per slot, whatever the model's name. None (manifests signed before
    #: slots): the slot the receiving device serves.
    slot: str | None = None
    #: Who may install it: {"devices": [ids], "classes": [hardware classes]}; None: anyone
    #: trusting the key.
    targets: dict[str, tuple[str, ...]] | None = None

    def slot_on(self, device_slot: str) -> str:
        """The slot this manifest fills on a device serving ``device_slot``."""
        return self.slot or device_slot

    def addressed_to(self, device_id: str, hardware_class: str | None) -> bool:
        if self.targets is None:
            return True
        return device_id in self.targets.get("devices", ()) or (
            hardware_class is not None and hardware_class in self.targets.get("classes", ())
        )

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def chunk_length(self, index: int) -> int:
        """Expected byte length of chunk ``index`` (the last one may be short)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "version": self.version,
            "release": self.release,
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
            "variant": self.variant.to_dict(),
            "requirements": self.requirements.to_dict(),
            "created": self.created,
            "expires": self.expires,
            "key_id": self.key_id,
        } | _optional_fields(self)

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict(), allow_floats=False)

    @classmethod
    def from_dict(cls, obj: Any) -> Manifest:
        """Schema validation only (no signature): raises ManifestError("invalid")."""
        return _parse_fields(obj)


@dataclass(frozen=True)
class SignedManifest:
    manifest: Manifest
    sig: str
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest.to_dict(), "sig": self.sig, "key_id": self.key_id}

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())


# ---------------------------------------------------------------------------------------------
# Schema


def _invalid(message: str) -> ManifestError:
    return ManifestError(f"invalid manifest: {message}", code=Reason.INVALID)


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(f"{key} must be an integer in [{lo}, {hi}], got {value!r:.40}")
    return value


def _token(value: Any, what: str, pattern: re.Pattern[str] = _TOKEN_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _invalid(f"{what} {value!r:.80} does not match {pattern.pattern}")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise _invalid(f"{what} must be a non-negative integer or null")
    return value


def _variant(obj: Any) -> Variant:
    if not isinstance(obj, dict) or not set(obj) <= {"recipe", "dtype", "delegate"}:
        raise _invalid("variant must be an object with recipe, dtype, delegate")
    v = Variant(**{k: _token(val, f"variant.{k}") for k, val in obj.items()})
    return v


def _requirements(obj: Any) -> Requirements:
    keys = {"accelerator", "runtimes", "operators", "memory_mb"}
    if not isinstance(obj, dict) or not set(obj) <= keys:
        raise _invalid(f"requirements must be an object with keys among {sorted(keys)}")
    acc = obj.get("accelerator")
    runtimes, operators = obj.get("runtimes", []), obj.get("operators", [])
    if not isinstance(runtimes, list) or not isinstance(operators, list):
        raise _invalid("requirements.runtimes and .operators must be lists")
    rts: list[tuple[str, str]] = []
    for item in runtimes:
        if not isinstance(item, dict) or set(item) != {"runtime", "min_version"}:
            raise _invalid("each requirements.runtimes item is {runtime, min_version}")
        rts.append((_token(item["runtime"], "runtime"), _token(item["min_version"], "min_version")))
    ops: list[tuple[str, int]] = []
    for item in operators:
        if not isinstance(item, dict) or set(item) != {"name", "version"}:
            raise _invalid("each requirements.operators item is {name, version}")
        ops.append((_token(item["name"], "operator"), _int(item, "version", 1, 1000)))
    return Requirements(
        None if acc is None else _token(acc, "requirements.accelerator"),
        tuple(rts),
        tuple(ops),
        _opt_int(obj.get("memory_mb"), "requirements.memory_mb"),
    )


def _parse_fields(obj: Any) -> Manifest:
    if not isinstance(obj, dict):
        raise _invalid("the manifest must be a JSON object")
    if not _FIELDS <= set(obj) <= _FIELDS | _OPTIONAL:
        missing, extra = sorted(_FIELDS - set(obj)), sorted(set(obj) - _FIELDS - _OPTIONAL)
        raise _invalid(f"fields missing {missing}, unexpected {extra}")
    if obj["schema"] != SCHEMA:
        raise _invalid(f"schema {obj['schema']!r:.40} is not {SCHEMA!r}")
    if not valid_id(obj["name"]):
        raise _invalid(f"name {obj['name']!r:.80} does not match {ID_PATTERN}")
    version = _token(obj["version"], "version", _VERSION_RE)
    if not valid_sha256(obj["sha256"]):
        raise _invalid("sha256 must be 64 lower-case hex characters")
    size = _int(obj, "size", 1, MAX_MODEL_SIZE)
    chunk_size = _int(obj, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_DATA)
    chunks = obj["chunks"]
    if not isinstance(chunks, list) or not all(valid_sha256(c) for c in chunks):
        raise _invalid("chunks must be a list of sha256 hex digests")
    if len(chunks) != math.ceil(size / chunk_size):
        raise _invalid(f"{len(chunks)} chunk hashes for {size} bytes in {chunk_size}-byte chunks")
    created = _int(obj, "created", 0, MAX_INT)
    expires = _int(obj, "expires", 0, MAX_INT)
    if expires <= created:
        raise _invalid("expires must be later than created")
    key_id = obj["key_id"]
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise _invalid("key_id must be 16 lower-case hex characters")
    return Manifest(
        name=obj["name"],
        version=version,
        release=_int(obj, "release", 0, MAX_INT),
        sha256=obj["sha256"],
        size=size,
        chunks=tuple(chunks),
        created=created,
        expires=expires,
        key_id=key_id,
        chunk_size=chunk_size,
        variant=_variant(obj["variant"]),
        requirements=_requirements(obj["requirements"]),
        slot=_slot(obj.get("slot")),
        targets=_targets(obj.get("targets")),
    )


def _optional_fields(m: Manifest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.slot is not None:
        out["slot"] = m.slot
    if m.targets is not None:
        out["targets"] = {k: list(v) for k, v in m.targets.items()}
    return out


def _slot(value: Any) -> str | None:
    if value is not None and not valid_id(value):
        raise _invalid(f"slot {value!r:.80} does not match {ID_PATTERN}")
    return value if value is None else str(value)


def _targets(value: Any) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        return None
    ok = isinstance(value, dict) and value and set(value) <= {"devices", "classes"}
    if not ok or not all(
        isinstance(v, list) and 0 < len(v) <= 10_000 and all(valid_id(x) for x in v)
        for v in value.values()
    ):
        raise _invalid('targets must be {"devices": [ids], "classes": [classes]}, non-empty')
    return {k: tuple(v) for k, v in value.items()}
