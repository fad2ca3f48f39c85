"""Targets files: parsing, per-class overrides, every error at once, checking measurements."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from deploy.loop.targets import Violation, load_targets, parse_targets

GOOD = """
model = "digits"

[targets]
p95_ms = 8
peak_memory_mb = 300
size_mb = 1.0
max_accuracy_drop = 1.0

[class."rpi4b-cpu"]
p95_ms = 20

[class."rpi4b-cpu/tflite-runtime"]
p95_ms = 80
mj_per_inference = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "targets.toml"
    p.write_text(text)
    return p


def test_class_sections_override_defaults_most_specific_first(tmp_path):
    t = load_targets(write(tmp_path, GOOD))
    assert t.model == "digits"
    other = t.for_class("rpi5-cpu/ai-edge-litert")
    assert (other.p95_ms, other.peak_memory_mb, other.mj_per_inference) == (8.0, 300.0, None)
    litert = t.for_class("rpi4b-cpu/ai-edge-litert")  # hardware-class section
    assert (litert.p95_ms, litert.size_mb, litert.overridden) == (20.0, 1.0, ("p95_ms",))
    legacy = t.for_class("rpi4b-cpu/tflite-runtime")  # exact registry class id wins
    assert (legacy.p95_ms, legacy.mj_per_inference, legacy.max_accuracy_drop) == (80.0, 5.0, 1.0)
    assert legacy.class_id == "rpi4b-cpu/tflite-runtime"


def test_every_problem_is_reported_at_once(tmp_path):
    bad = """
    colour = "red"
    [targets]
    p95_ms = "fast"
    peak_memory_mb = -1
    latency = 3
    [class."rpi4b-cpu"]
    size_mb = true
    max_accuracy_drop = 0
    """
    with pytest.raises(ConfigError) as err:
        load_targets(write(tmp_path, bad))
    msg = err.value.message
    for expected in (
        "colour: unknown key",
        "targets.p95_ms: must be a number",
        "targets.peak_memory_mb: must be a positive",
        "targets.latency: unknown target",
        "class.rpi4b-cpu.size_mb: must be a number",
        "5 problem(s)",
    ):
        assert expected in msg
    assert "max_accuracy_drop: must" not in msg  # 0 points is a valid (strict) budget


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_targets(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_targets(write(tmp_path, "[targets\np95_ms = 1"))
    with pytest.raises(ConfigError, match="must be a table"):
        parse_targets({"targets": 5})


def test_check_lists_violations_and_ignores_unmeasured_metrics():
    ct = parse_targets({"targets": {"p95_ms": 8, "mj_per_inference": 2, "size_mb": 1,
                                    "max_accuracy_drop": 1}}).for_class("c")  # fmt: skip
    got = ct.check({"p95_ms": 12.3, "mj_per_inference": None, "size_mb": 0.5,
                    "accuracy_drop": 1.5})  # fmt: skip
    assert got == [Violation("p95_ms", 8.0, 12.3), Violation("max_accuracy_drop", 1.0, 1.5)]
    assert got[0].describe() == "p95 12.3 ms > target 8 ms"
    assert ct.unknown({"p95_ms": 3.0}) == ["mj_per_inference", "size_mb", "max_accuracy_drop"]
    assert ct.check({"p95_ms": 8.0}) == []  # on the target is meeting it
