"""Can this runtime load this model? Decided from the flatbuffer, before any interpreter exists.

The answer comes from operator tables measured on each runtime by ``agent.runtime.optable`` and
committed
under ``agent/runtime/data/ops_<runtime>_<version>.json``: an operator version is supported only if
the
runtime was seen to resolve it. See docs/compatibility.md.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import IncompatibleModelError
from agent.runtime.modelfile import EDGETPU_CUSTOM_OP
from agent.runtime.modelinfo import ModelInfo, OperatorInfo

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class OpTable:
    """What one runtime version was measured to resolve."""

    runtime: str
    version: str
    builtin: Mapping[str, frozenset[int]]
    custom: Mapping[str, bool]
    source: str
    generated: str

    def supports(self, op: OperatorInfo) -> bool:
        if op.custom:
            return bool(self.custom.get(op.name, False))
        return op.version in self.builtin.get(op.name, frozenset())


@dataclass(frozen=True)
class CompatReport:
    ok: bool
    runtime: str
    version: str
    problems: list[str]
    checked: bool = True
    table_version: str | None = None
    delegate: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "runtime": self.runtime,
            "version": self.version,
            "problems": list(self.problems),
            "checked": self.checked,
            "table_version": self.table_version,
            "delegate": self.delegate,
            "notes": list(self.notes),
        }


def version_key(version: str) -> tuple[int, ...]:
    """(2, 14) for "2.14.0", "2.14" or "2.14.0rc1": trailing zeros do not count."""
    parts = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def load_table(path: Path) -> OpTable:
    raw = json.loads(path.read_text())
    return OpTable(
        runtime=str(raw["runtime"]),
        version=str(raw["version"]),
        builtin={
            name: frozenset(int(v) for v in entry["versions"])
            for name, entry in raw["builtin"].items()
        },
        custom={str(k): bool(v) for k, v in raw.get("custom", {}).items()},
        source=path.name,
        generated=str(raw.get("generated", "")),
    )


@functools.cache
def tables(directory: Path = DATA_DIR) -> tuple[OpTable, ...]:
    """Every committed operator table, sorted by runtime then version."""
    found = []
    for path in sorted(directory.glob("ops_*.json")):
        try:
            found.append(load_table(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable operator table %s: %s", path, exc)
    return tuple(sorted(found, key=lambda t: (t.runtime, version_key(t.version))))


def find_table(
    runtime: str, version: str, directory: Path = DATA_DIR
) -> tuple[OpTable | None, str | None]:
    """The table for exactly this version, else the nearest lower one (with a note saying so)."""
    wanted = version_key(version)
    candidates = [t for t in tables(directory) if t.runtime == runtime]
    for table in candidates:
        if version_key(table.version) == wanted:
            return table, None
    lower = [t for t in candidates if version_key(t.version) < wanted]
    if lower:
        table = lower[-1]
        return table, (
            f"no operator table for {runtime} {version}; used the one measured on "
            f"{runtime} {table.version} (a newer runtime resolves at least as much)"
        )
    known = ", ".join(f"{t.runtime} {t.version}" for t in tables(directory)) or "none"
    return None, (
        f"no operator table for {runtime} {version} (known: {known}); operator versions "
        "not checked - generate one with `python -m agent.runtime.optable` under that runtime"
    )


def _op_problem(op: OperatorInfo, table: OpTable, label: str) -> str:
    versions = table.builtin.get(op.name)
    if not versions:
        return f"{op.name} v{op.version} ({label} does not have this operator)"
    if op.version > max(versions):
        return f"{op.name} v{op.version} ({label} resolves up to v{max(versions)})"
    listed = ", ".join(f"v{v}" for v in sorted(versions))
    return f"{op.name} v{op.version} ({label} resolves only {listed})"


def _custom_problems(
    info: ModelInfo, table: OpTable | None, label: str, delegate: str, notes: list[str]
) -> list[str]:
    kind = delegate.split(":", 1)[0]
    problems = []
    for name in info.custom_ops:
        if name == EDGETPU_CUSTOM_OP:
            if kind != "edgetpu":
                problems.append(
                    f"{name} (custom op) needs the Edge TPU delegate: the model is compiled for "
                    f"the Edge TPU and cannot run on delegate '{delegate}'"
                )
        elif table is not None and table.custom.get(name, False):
            continue
        elif kind == "external":
            notes.append(f"custom op {name} must be provided by the external delegate")
        elif table is None:
            notes.append(f"custom op {name} not checked (no operator table)")
        else:
            problems.append(
                f"{name} (custom op) is not registered in {label}; it needs a delegate or a "
                "custom op resolver that provides it"
            )
    return problems


def check(info: ModelInfo, runtime: str, version: str, delegate: str = "cpu") -> CompatReport:
    """Decide from the operator table whether ``runtime`` ``version`` can load the model."""
    table, note = find_table(runtime, version)
    notes = [note] if note else []
    label = f"{runtime} {table.version if table else version}"
    problems = _custom_problems(info, table, label, delegate, notes)
    if table is not None:
        problems += [
            _op_problem(op, table, label)
            for op in info.operators
            if not op.custom and not table.supports(op)
        ]
    if note:
        log.info("%s", note)
    return CompatReport(
        ok=not problems,
        runtime=runtime,
        version=version,
        problems=problems,
        checked=table is not None,
        table_version=table.version if table else None,
        delegate=delegate,
        notes=notes,
    )


def ensure_compatible(info: ModelInfo, runtime: str, version: str, delegate: str = "cpu") -> None:
    """Raise IncompatibleModelError naming each operator the runtime cannot resolve."""
    report = check(info, runtime, version, delegate)
    if not report.ok:
        raise IncompatibleModelError(
            f"model cannot run on {runtime} {version}: " + "; ".join(report.problems),
            hint="convert the model with an older converter, or upgrade the runtime "
            "(see edge-deploy convert / docs/compatibility.md)",
        )


def min_runtime(info: ModelInfo, delegate: str = "cpu") -> list[dict[str, Any]]:
    """Check the model against every known table: which runtimes can load it."""
    out = []
    for table in tables():
        report = check(info, table.runtime, table.version, delegate)
        out.append(
            {
                "runtime": table.runtime,
                "version": table.version,
                "ok": report.ok,
                "problems": report.problems,
            }
        )
    return out
