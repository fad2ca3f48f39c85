"""A float model that carries complex64 and int32 tensors is float: classified by what is
quantized, not by a whitelist of dtypes (issue 11, item 6).

The model is ``tests/models/extra/rfft_audio_fp32.tflite``, made by TensorFlow
(``tests/models/make_rfft.py``): STFT (RFFT2D, complex64 tensors) -> COMPLEX_ABS -> log ->
FULLY_CONNECTED -> SOFTMAX, with int32 shape tensors. It goes through the classifier,
``edge-agent inspect``, every recipe of ``edge-deploy convert`` and a push to a real agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.runtime.modelfile import inspect

REPO = Path(__file__).resolve().parent.parent
RFFT = REPO / "tests" / "models" / "extra" / "rfft_audio_fp32.tflite"


def test_the_rfft_model_carries_complex_and_int32_tensors_and_is_float() -> None:
    import tflite

    model = tflite.Model.GetRootAsModel(RFFT.read_bytes(), 0)
    sub = model.Subgraphs(0)
    types = {sub.Tensors(i).Type() for i in range(sub.TensorsLength())}
    assert tflite.TensorType.COMPLEX64 in types and tflite.TensorType.INT32 in types
    info = inspect(RFFT)
    assert "RFFT2D" in {op.name for op in info.operators}
    assert info.quantization == "fp32"


def test_edge_agent_inspect_calls_it_fp32() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "inspect", str(RFFT), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["quantization"] == "fp32"


@pytest.mark.host
def test_every_recipe_takes_it_as_a_float_source(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_quantizer")
    from deploy.convert import Converter

    calib = tmp_path / "audio.npz"
    np.savez(calib, audio=np.random.RandomState(1).randn(16, 1, 1024).astype(np.float32))
    conv = Converter(RFFT, calibration=calib, validation=calib, cache=False)
    results = {r.recipe: r for r in conv.convert_all("all", tmp_path / "out")}
    for recipe in ("fp32", "fp16", "dynamic-int8", "int8", "int16x8", "selective"):
        r = results[recipe]
        assert r.ok, (recipe, r.error)
        assert "already quantized" not in (r.error or "")
    assert results["fp32"].evaluation is not None
    assert results["dynamic-int8"].quantization == "dynamic-int8"
    # the int8 variant quantizes what it can; RFFT2D stays float, so it is mixed, not int8
    assert results["int8"].quantization in ("int8", "mixed")


@pytest.mark.broker
@pytest.mark.runtime
def test_a_push_commits_it_and_the_manifest_says_fp32(
    broker: object, keys_dir: Path, start_agent: Callable[..., object]
) -> None:
    from deploy.keys import load_private
    from deploy.mqtt import BrokerAddress
    from deploy.push import push_model
    from tests.agent_proc import AgentProcess
    from tests.broker import Broker

    assert isinstance(broker, Broker)
    agent = start_agent("pi-01")
    assert isinstance(agent, AgentProcess)
    result = push_model(
        RFFT,
        "pi-01",
        BrokerAddress(broker.host, broker.port),
        load_private(keys_dir),
        name="audio",
        version="1",
        release=1,
        gates={"min_inferences": 10, "min_seconds": 0.3},
        progress=None,
        timeout_s=120,
    )
    assert result.ok and result.outcome == "committed", result
    state = agent.state()
    assert state is not None and state["model"]["sha256"] == result.sha256
    assert state["model"]["variant"]["dtype"] == "fp32", state["model"]
