"""Typed access to a parsed JSON message: every failure is a ProtocolError naming the field.

Shared by the message types (agent.wire.messages, agent.wire.status).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from agent.errors import ProtocolError
from agent.wire.codec import canonical_json, parse_json_object


class Reader:
    """Typed access to one JSON object; every failure is a ProtocolError naming the field."""

    def __init__(self, obj: Any, what: str) -> None:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what}: expected a JSON object, got {type(obj).__name__}")
        self.obj: dict[str, Any] = obj
        self.what = what

    def _fail(self, key: str, expected: str) -> ProtocolError:
        got = self.obj.get(key)
        return ProtocolError(f"{self.what}: field {key!r} must be {expected}, got {got!r:.80}")

    def get_str(self, key: str, *, default: str | None = None, max_len: int = 256) -> str:
        value = self.obj.get(key, default)
        if not isinstance(value, str) or len(value) > max_len:
            raise self._fail(key, f"a string of at most {max_len} characters")
        return value

    def get_choice(self, key: str, choices: Iterable[str], *, max_len: int = 256) -> str:
        """A string that must be one of ``choices`` (e.g. a StrEnum's values)."""
        value = self.get_str(key, max_len=max_len)
        if value not in set(choices):
            raise ProtocolError(f"{self.what}: unknown {key} {value!r}")
        return value

    def opt_str(self, key: str, *, max_len: int = 256) -> str | None:
        return None if self.obj.get(key) is None else self.get_str(key, max_len=max_len)

    def get_int(self, key: str, *, default: int | None = None, lo: int = 0, hi: int = 2**53) -> int:
        value = self.obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(key, f"an integer in [{lo}, {hi}]")
        return value

    def opt_int(self, key: str, *, lo: int = 0, hi: int = 2**53) -> int | None:
        return None if self.obj.get(key) is None else self.get_int(key, lo=lo, hi=hi)

    def get_num(self, key: str, *, default: float | None = None) -> float:
        value = self.obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "a number")
        if abs(value) > 1e15 or not math.isfinite(value):
            raise self._fail(key, "a finite number")
        return float(value)

    def opt_num(self, key: str) -> float | None:
        return None if self.obj.get(key) is None else self.get_num(key)

    def get_bool(self, key: str, *, default: bool | None = None) -> bool:
        value = self.obj.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def get_dict(self, key: str, *, default: dict[str, Any] | None = None) -> dict[str, Any]:
        value = self.obj.get(key, default)
        if not isinstance(value, dict):
            raise self._fail(key, "an object")
        return value

    def opt_dict(self, key: str) -> dict[str, Any] | None:
        return None if self.obj.get(key) is None else self.get_dict(key)

    def get_list(self, key: str, *, default: list[Any] | None = None) -> list[Any]:
        value = self.obj.get(key, default)
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value


def read_message(data: bytes, max_bytes: int, what: str) -> Reader:
    return Reader(parse_json_object(data, max_bytes=max_bytes, what=what), what)


def drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def field_values(record: Any) -> dict[str, Any]:
    """A dataclass instance's fields by name, the values as they are (``asdict`` copies)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


class WireMessage:
    """Base of the typed messages: the payload (``to_json``) is the canonical JSON of
    ``to_dict()``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())
