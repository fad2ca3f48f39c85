"""`edge-agent` as a user runs it: a real subprocess, JSON outputs, exit codes, error lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.modelzoo import model
from tests.sim_meters import PowerProfile, SimUM25C

REPO = Path(__file__).resolve().parent.parent
TREES = REPO / "tests" / "hwtrees"


def edge_agent(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_probe_json_on_a_captured_pi_with_a_usb_coral() -> None:
    out = edge_agent("probe", "--json", "--hw-root", str(TREES / "rpi4b-coral-usb"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["board"].startswith("Raspberry Pi 4 Model B")
    assert report["cpu"]["cores"] == 4 and report["cpu"]["big_cores"] == 4
    assert report["accelerators"][0]["kind"] == "edgetpu"
    assert report["accelerators"][0]["device"] == "usb:0"
    names = {r["name"] for r in report["runtimes"]}
    assert {"ai-edge-litert", "tflite-runtime", "tensorflow"} <= names
    assert any(r["available"] for r in report["runtimes"])
    assert report["hardware_class"] == "rpi4b-edgetpu-usb"


def test_probe_text_names_the_board_and_the_accelerator() -> None:
    out = edge_agent("probe", "--hw-root", str(TREES / "x86-m2-coral"))
    assert out.returncode == 0, out.stderr
    assert "edgetpu pci:0" in out.stdout
    assert "runtimes:" in out.stdout


@pytest.mark.runtime
def test_bench_json_has_the_documented_fields() -> None:
    out = edge_agent(
        "bench", str(model("digits_int8")), "--json", "--runs", "20", "--min-seconds", "0.2",
        "--threads", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    lat = r["latency_ms"]
    assert lat["p5"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["runs"] >= 20 and r["threads"] == 1
    assert r["init_ms"] > 0 and r["first_ms"] > 0
    assert r["memory_mb"]["peak"] >= r["memory_mb"]["rss_after_load"] > 0
    assert r["runtime"]["name"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert r["delegate"]["delegate"] == "cpu"
    assert r["energy"] is None


@pytest.mark.runtime
def test_bench_with_a_usb_meter_reports_energy(tmp_path: Path) -> None:
    profile = PowerProfile(3.0)
    with SimUM25C(tmp_path / "rfcomm0", profile) as sim:
        out = edge_agent(
            "bench", str(model("digits_int8")), "--json", "--runs", "50", "--min-seconds", "1",
            "--meter", f"um25c:{sim.path}?interval=0.1",
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    e = json.loads(out.stdout)["energy"]
    for key in ("avg_w", "idle_w", "mj_per_inference", "source"):
        assert e[key] is not None, key
    assert e["measured"] is True and e["source"].startswith("um25c:")
    assert e["avg_w"] == pytest.approx(3.0, rel=0.05)
    # the profile is flat: the run is not above idle, so there is no net figure, and it says why
    assert e["mj_per_inference_net"] is None and e["basis"] == "gross"
    assert "not above idle" in e["net_missing_reason"]


@pytest.mark.runtime
@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing.tflite", "no such file"),
        (lambda d: _write(d / "notes.tflite", b"hello, not a model"), "not a TFLite"),
        (lambda d: model("digits_edgetpu"), "Edge TPU"),
    ],
    ids=["missing", "not-a-model", "edgetpu-model-on-cpu"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make, fragment: str) -> None:
    path = make(tmp_path)
    out = edge_agent("bench", str(path), "--json", "--delegate", "cpu")
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("edge-agent: error:")
    assert fragment in lines[0]
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.runtime
def test_inspect_reports_quantization_and_compatibility() -> None:
    out = edge_agent("inspect", str(model("digits_int8")), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["quantization"] == "int8"
    assert info["compatibility"] and all(c["ok"] for c in info["compatibility"])
