"""`edge-deploy fleet`: the class summary and the devices worst first, on a registry filled by
simulated devices (the simulator's own births and windows); JSON keeps every device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deploy.fleet.registry import Registry
from deploy.fleet.summary import class_summary, mark_stale, worst_first
from tests import fleet_view_fill as fill

CLI = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())"]


def _row(device: str, **kw: object) -> dict[str, object]:
    return {"device": device, "online": True, "class": "c", "last_seen_s": 1.0, "p95_ms": 5.0,
            "targets": "meets", "model": "digits", "variant": "int8"} | kw  # fmt: skip


def test_worst_first_offline_then_misses_then_stale_then_measuring_then_meets() -> None:
    rows = mark_stale(
        [
            _row("meets-fast", p95_ms=2.0),
            _row("meets-slow", p95_ms=9.0),
            _row("measuring", targets="measuring (1/3 windows)"),
            _row("stale", last_seen_s=900.0),
            _row("misses", targets="misses: p95 14 ms > target 12 ms", p95_ms=14.0),
            _row("offline", online=False, last_seen_s=900.0),
        ],
        stale_s=300,
    )
    order = [r["device"] for r in worst_first(rows)]
    assert order == ["offline", "misses", "stale", "measuring", "meets-slow", "meets-fast"]
    assert [r["stale"] for r in rows] == [False, False, False, True, False, False]  # offline: not


def test_class_summary_counts_and_names_the_worst_device() -> None:
    rows = mark_stale([_row("a", p95_ms=4.0), _row("b", p95_ms=6.0, variant="fp32",
                       targets="misses: p95"), _row("c", p95_ms=5.0), _row("d", **{"class": "e"})],
                      stale_s=300)  # fmt: skip
    by = {c["class"]: c for c in class_summary(rows)}
    c = by["c"]
    assert (c["devices"], c["online"], c["stale"], c["targets_met"], c["targets_judged"]) == (
        3, 3, 0, 2, 3)  # fmt: skip
    assert (c["p95_median_ms"], c["p95_worst_ms"], c["worst"]) == (5.0, 6.0, "b")
    assert c["variant"] == "int8 2, fp32 1" and by["e"]["worst"] is None
    assert [s["class"] for s in class_summary(rows)] == ["c", "e"]  # the class in trouble first


def test_fleet_command_summarises_a_simulated_registry(tmp_path: Path) -> None:
    reg_path = tmp_path / "fleet.sqlite"
    with Registry(reg_path) as reg:
        fill.fill(reg, tmp_path / "v", 300, 3)
    targets = tmp_path / "t.toml"
    targets.write_text(fill.TARGETS)
    args = [*CLI, "fleet", "--registry", str(reg_path), "--targets", str(targets)]
    text = subprocess.run([*args, "--limit", "8"], capture_output=True, text=True, check=True,
                          timeout=60).stdout  # fmt: skip
    lines = text.splitlines()
    assert lines[0].startswith("class") and "rpi4b-cpu/ai-edge-litert" in text
    title = next(i for i, ln in enumerate(lines) if ln.startswith("devices, worst first"))
    assert lines[title] == "devices, worst first (8 of 300)"
    first = lines[title + 3]  # after the header and the rule: an offline device (every 50th)
    assert first.startswith("sim-00") and " no " in first
    rows = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True,
                                     check=True, timeout=60).stdout)  # fmt: skip
    assert len(rows) == 300 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert {"id", "online", "class", "windows", "last_seq", "stale"} <= set(rows[0])
    assert all(r["windows"] == 3 and r["last_seq"] == 2 for r in rows)
    assert sum(r["stale"] for r in rows) == sum(1 for i in range(300) if i % 70 == 0 and i % 50)
    summary = json.loads(subprocess.run([*args, "--json", "--by-class"], capture_output=True,
                                        text=True, check=True, timeout=60).stdout)  # fmt: skip
    pi4 = next(c for c in summary if c["class"] == "rpi4b-cpu/ai-edge-litert")
    assert (
        pi4["devices"] == 150 and pi4["online"] == 150 - 6
    )  # every 50th device is offline, all even
    fp32 = sum(1 for i in range(0, 300, 2) if i % 10 == 0)  # every 10th serves fp32
    assert pi4["variant"].startswith(f"int8 {150 - fp32}, fp32 {fp32}")
