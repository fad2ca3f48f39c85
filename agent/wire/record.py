"""``to_dict()`` for plain data records: one implementation (``dataclasses.asdict``) for the
frozen dataclasses on both sides (agent and deploy) whose dict form is just their fields."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class Record:
    """Mixin for a dataclass: ``to_dict()`` is :func:`dataclasses.asdict` of it (fields in
    declaration order, nested dataclasses, lists and dicts copied recursively)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast("DataclassInstance", self))
