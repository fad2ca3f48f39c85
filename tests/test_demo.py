"""The demo (`edge-deploy demo`), shortened, in the test suite: embedded Mosquitto, one real agent
per hardware class, digitsnet converted with four recipes, the loop to convergence, the fleet
table and the HTML report.

The demo's own p95 targets are absolute (0.6 ms on the Pi 4 class); on a shared or slower machine
they would measure the machine, not the loop. So the test scales them to the float model's p95 as
``edge-agent bench`` measures it here and now (the same ratio the demo's numbers encode).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from tests.loop_fixtures import DIGITSNET, bench_p95

pytestmark = [pytest.mark.broker, pytest.mark.runtime, pytest.mark.host, pytest.mark.slow]


def test_the_demo_converges_and_writes_the_report(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    from deploy.demo import DEVICES, MODEL, DemoOptions, run_demo

    float_p95 = bench_p95(DIGITSNET / "digitsnet_fp32.tflite", threads=1)
    devices = tuple(d for d in DEVICES if d.device_id in ("pi4-01", "pi5-01", "nuc-coral-01"))
    assert len({d.hw_tree for d in devices}) == 3
    targets = {
        "model": MODEL,
        "targets": {"max_accuracy_drop": 1.0},
        "class": {
            "rpi4b-cpu": {"p95_ms": 0.6 * float_p95},  # the float model misses it
            "rpi5-cpu": {"p95_ms": 10 * float_p95},  # loose
            "x86_64-edgetpu-pci": {"size_mb": 0.6, "p95_ms": 10 * float_p95},
        },
    }
    opts = DemoOptions(
        devices=devices, telemetry_s=0.5, load_hz=40.0, min_windows=3, min_inferences=60,
        recipes=("fp32", "dynamic-int8", "int8", "edgetpu"), timeout_s=150.0, targets=targets,
    )  # fmt: skip
    out = io.StringIO()
    rc = run_demo(tmp_path / "demo", out=out, opts=opts)
    text = out.getvalue()
    assert rc == 0, text
    # every class converged: the Pi 5 class (loose) kept the float model, the Coral box (size
    # budget the float model cannot meet) moved to a quantized one. Whether the Pi 4 class had
    # to move depends on the bench above versus the agents' own measurements, taken at
    # different moments on a shared machine: tests/test_loop_e2e.py proves that part with
    # targets from the devices' own telemetry.
    assert re.search(r"rpi4b-cpu/\S+: done, chosen \S+ after [0-3] trial", text), text
    assert re.search(r"rpi5-cpu/\S+: done, chosen fp32 after 0 trial", text), text
    assert re.search(r"x86_64-edgetpu-pci/\S+: done, chosen (dynamic-int8|int8) ", text), text
    # the fleet table: a header and one row per device, with its class
    header = next(line for line in text.splitlines() if line.startswith("device "))
    assert "class" in header and "variant" in header
    for d in devices:
        assert re.search(rf"^{re.escape(d.device_id)}\s+yes\s+", text, re.M), d.device_id
    # the report's path, and the report with its plots inline
    m = re.search(r"^report: (.+)$", text, re.M)
    assert m, text
    report = Path(m.group(1).strip())
    assert report.is_file()
    assert "<img" in report.read_text(encoding="utf-8")
