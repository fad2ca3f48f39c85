"""The demo (`edge-deploy demo`), shortened, in the test suite: embedded Mosquitto, one real agent
per hardware class, fusionnet (the quantization-sensitive task) converted with four recipes, the
loop to convergence, the fleet table and the HTML report.

The classes that must move have size budgets and a 1-point accuracy budget (deploy/demo.py says
why not p95 here): full int8 fits the Pi 4's size budget but loses ~88 points, so the budget
rules it out and the loop picks a quantized variant that keeps the accuracy.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.runtime, pytest.mark.host, pytest.mark.slow]


def test_the_demo_converges_and_writes_the_report(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    from deploy.demo import DEVICES, DemoOptions, run_demo

    devices = tuple(d for d in DEVICES if d.device_id in ("pi4-01", "pi5-01", "nuc-coral-01"))
    assert len({d.hw_tree for d in devices}) == 3
    opts = DemoOptions(
        devices=devices, telemetry_s=0.5, load_hz=40.0, min_windows=3, min_inferences=60,
        recipes=("fp32", "dynamic-int8", "int8", "edgetpu"), timeout_s=150.0,
    )  # fmt: skip
    out = io.StringIO()
    rc = run_demo(tmp_path / "demo", out=out, opts=opts)
    text = out.getvalue()
    assert rc == 0, text
    # the accuracy budget decides: full int8 is ruled out, visibly
    assert re.search(r"accuracy budget: int8 loses \d+\.\d points against float", text), text
    # every class converged: the Pi 4 class (0.25 MB) and the Coral box (0.5 MB) moved to a
    # quantized variant within the budget, the Pi 5 class (loose) kept the float model
    for cls in ("rpi4b-cpu", "x86_64-edgetpu-pci"):
        m = re.search(rf"{cls}/\S+: done, chosen (\S+) after [1-3] trial", text)
        assert m and m.group(1) not in ("fp32", "int8"), text
    assert re.search(r"rpi5-cpu/\S+: done, chosen fp32 after 0 trial", text), text
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


def test_the_secure_demo_runs_the_loop_over_tls_with_the_generated_acl(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    from deploy.demo import DEVICES, DemoOptions, run_demo

    devices = tuple(d for d in DEVICES if d.device_id == "pi5-01")
    opts = DemoOptions(
        devices=devices,
        telemetry_s=0.5,
        min_windows=3,
        min_inferences=60,
        recipes=("fp32", "int8"),
        timeout_s=120.0,
        secure=True,
    )
    out = io.StringIO()
    rc = run_demo(tmp_path / "demo", out=out, opts=opts)
    text = out.getvalue()
    assert rc == 0, text
    assert "(TLS, certificates, ACL" in text
    assert re.search(r"^pi5-01\s+yes\s+", text, re.M), text
    conf = (tmp_path / "demo" / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "allow_anonymous false" in conf
    agent_toml = (tmp_path / "demo" / "devices" / "pi5-01" / "agent.toml").read_text()
    assert "tls_cert" in agent_toml
    log = (tmp_path / "demo" / "devices" / "pi5-01" / "agent.log").read_text()
    assert "Not authorized" not in log and "0x87" not in log
