"""What an install is held to besides its signature: the operators this board's runtime resolves
(checked at acceptance, before anything is written) and the trial's health gates (checked by
agent.delivery.trial while the new model serves on trial).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import HealthConfig
from agent.wire.manifest import Manifest


@dataclass(frozen=True)
class Gates:
    """Health gates of a trial (config defaults, overridable per deploy)."""

    min_inferences: int
    min_seconds: float
    max_seconds: float
    p95_ms: float | None
    max_rss_mb: float | None

    @classmethod
    def from_config(cls, h: HealthConfig) -> Gates:
        return cls(h.min_inferences, h.min_seconds, h.max_seconds, h.p95_ms, h.max_rss_mb)

    @classmethod
    def merge(cls, base: Gates, override: Mapping[str, Any]) -> Gates:
        def num(key: str, default: Any) -> Any:
            value = override.get(key, default)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            return value if ok else default

        return cls(
            int(num("min_inferences", base.min_inferences)),
            float(num("min_seconds", base.min_seconds)),
            float(num("max_seconds", base.max_seconds)),
            num("p95_ms", base.p95_ms),
            num("max_rss_mb", base.max_rss_mb),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def operator_problems(manifest: Manifest, runtime: str, version: str, delegate: str) -> list[str]:
    """Operators the manifest declares that this runtime is known not to resolve."""
    from agent.runtime import compat, modelfile
    from agent.runtime.modelinfo import OperatorInfo

    table, _note = compat.find_table(runtime, version)
    if table is None:
        return []
    problems = []
    for name, ver in manifest.requirements.operators:
        custom = name not in table.builtin
        if custom and (name == modelfile.EDGETPU_CUSTOM_OP and delegate.startswith("edgetpu")):
            continue
        op = OperatorInfo(name=name, version=ver, custom=custom, count=1)
        if not table.supports(op):
            problems.append(f"{name} v{ver} (not resolved by {runtime} {table.version})")
    return problems
