"""`edge-deploy study` against a real agent (issue 11, item 5): the digits models of
tests/models x two recipes, converted on the host, pushed to the device, benched there with the
signed bench command over MQTT; JSON rows on stdout, or the seed table, CSV, JSON and plot."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.agent_proc import REPO

pytestmark = [pytest.mark.broker, pytest.mark.host, pytest.mark.slow, pytest.mark.timeout(400)]

MODELS = REPO / "tests" / "models"
DATA = MODELS / "digits_data.npz"
HWTREES = REPO / "deploy" / "data" / "hwtrees"
ROW_KEYS = {"model", "recipe", "size_bytes", "p50_ms", "p95_ms", "device", "accuracy", "agreement"}


def edge_deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())", *args],
        check=False, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip


def test_study_measures_every_model_and_recipe_on_the_device(
    broker, keys_dir, start_agent, tmp_path
):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_quantizer")
    pi = start_agent("pi4-01", hw_root=str(HWTREES / "rpi4b"), ready_check=True)
    common = ["--device", "pi4-01", "--broker", broker.url, "--keys", str(keys_dir),
              "--calibration", str(DATA), "--validation", str(DATA), "--runs", "50"]  # fmt: skip
    sources = [str(MODELS / "digits_fp32.tflite"), str(MODELS / "digits.keras")]
    proc = edge_deploy("study", *sources, "--recipes", "fp32,int8", *common, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["model"], r["recipe"]) for r in rows] == [
        ("digits_fp32", "fp32"), ("digits_fp32", "int8"), ("digits", "fp32"), ("digits", "int8"),
    ]  # fmt: skip
    for r in rows:
        assert set(r) >= ROW_KEYS and r["status"] == "ok" and r["device"] == "pi4-01", r
        assert r["size_bytes"] > 0 and 0 < r["p50_ms"] <= r["p95_ms"], r
        assert r["accuracy"] > 0.9, r  # digits_data.npz has labels
    sizes = {(r["model"], r["recipe"]): r["size_bytes"] for r in rows}
    assert sizes[("digits", "int8")] < sizes[("digits", "fp32")] / 2
    assert "[4/4] digits int8: ok" in proc.stderr  # progress on stderr
    # the device really ran the last one: it serves the study's int8 variant of digits
    model = (pi.state() or {}).get("model") or {}
    assert model.get("name") == "study-digits" and model.get("version") == "int8"

    out = tmp_path / "study"
    proc = edge_deploy("study", sources[1], "--recipes", "fp32,int8", *common, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (out / "study.md").read_text()
    assert "| model | top-1 float | top-1 PTQ | top-1 QAT | ms float | ms PTQ |" in table
    assert "| digits | fp32 | ok |" in table and table in proc.stdout
    with (out / "study.csv").open() as fh:
        assert [r["recipe"] for r in csv.DictReader(fh)] == ["fp32", "int8"]
    assert [r["recipe"] for r in json.loads((out / "study.json").read_text())] == ["fp32", "int8"]
    assert (out / "study.png").stat().st_size > 1000


def test_study_bad_input_is_one_line_and_exit_2(broker, keys_dir, tmp_path):
    proc = edge_deploy("study", str(tmp_path / "nope.keras"), "--device", "x",
                       "--broker", broker.url, "--keys", str(keys_dir))  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "source" in proc.stderr and "nope.keras" in proc.stderr
    digits = str(MODELS / "digits.keras")
    proc = edge_deploy("study", digits, "--recipes", "fp33", "--device", "x",
                       "--broker", broker.url, "--keys", str(keys_dir))  # fmt: skip
    assert proc.returncode == 2 and "unknown recipe 'fp33'" in proc.stderr, proc.stderr
