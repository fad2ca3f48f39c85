"""agent.runtime.modelfile: real models are described correctly; garbage never escapes as a stray
error."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ModelFileError
from agent.runtime.modelfile import inspect
from agent.runtime.optable import build_probe_model

MODELS = Path(__file__).parent / "models"


def zoo(name: str) -> Path:
    """A committed test model from the main (TF 2.21) set, as tests/modelzoo.py names them."""
    path = MODELS / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"{path} not generated (run tests/models/make_models.py)")
    return path


@pytest.mark.parametrize(
    ("name", "quantization", "input_dtype"),
    [
        ("digits_fp32", "fp32", "float32"),
        ("digits_fp16", "fp16", "float32"),
        ("digits_dynamic_int8", "dynamic-int8", "float32"),
        ("digits_int8", "int8", "int8"),
        ("digits_int16x8", "int16x8", None),
    ],
)
def test_quantization_is_classified_from_tensor_types(name, quantization, input_dtype):
    info = inspect(zoo(name))
    assert info.quantization == quantization
    if input_dtype:
        assert info.inputs[0].dtype == input_dtype
    assert not info.is_edgetpu
    assert info.custom_ops == []


def test_fp32_model_description_matches_the_file():
    path = zoo("digits_fp32")
    data = path.read_bytes()
    info = inspect(path)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.version == 3
    names = {op.name for op in info.operators}
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= names
    assert all(op.count >= 1 and op.version >= 1 and not op.custom for op in info.operators)
    (inp,) = info.inputs
    assert inp.shape == (1, 8, 8, 1)
    assert inp.shape_signature[1:] == (8, 8, 1)
    assert inp.shape_signature[0] in (-1, 1)
    (out,) = info.outputs
    assert out.shape == (1, 10)
    assert out.scale is None and out.zero_point is None and not out.per_channel
    (sig,) = info.signatures
    assert sig["subgraph"] == 0 and sig["key"]
    assert len(sig["inputs"]) == 1 and len(sig["outputs"]) == 1
    json.dumps(info.to_dict())  # JSON-safe
    assert inspect(data) == info  # bytes and path give the same answer


def test_int8_io_carries_scale_and_zero_point():
    info = inspect(zoo("digits_int8"))
    for t in (*info.inputs, *info.outputs):
        assert t.dtype == "int8"
        assert t.scale is not None and t.scale > 0
        assert isinstance(t.zero_point, int) and -128 <= t.zero_point <= 127
        assert not t.per_channel


def test_edgetpu_model_is_recognised():
    info = inspect(zoo("digits_edgetpu"))
    assert info.is_edgetpu
    assert info.custom_ops == ["edgetpu-custom-op"]
    assert any(op.custom and op.name == "edgetpu-custom-op" for op in info.operators)


def test_unknown_custom_op_is_listed():
    info = inspect(zoo("digits_unknown_custom"))
    assert len(info.custom_ops) == 1
    assert info.custom_ops[0] != "edgetpu-custom-op"
    assert not info.is_edgetpu


def test_builtin_code_above_127_reads_the_int32_field():
    info = inspect(build_probe_model(150, 2, with_node=True))
    assert [(op.name, op.version, op.count) for op in info.operators] == [("GELU", 2, 1)]


def test_builtin_code_is_max_of_both_fields():
    # A writer that fills only the int32 field (deprecated field left 0 = ADD).
    info = inspect(build_probe_model(5, 1, deprecated_code=0))
    assert info.operators[0].name == "DEPTH_TO_SPACE"


def test_unknown_builtin_code_gets_a_placeholder_name():
    info = inspect(build_probe_model(250, 1))
    assert info.operators[0].name == "BUILTIN_250"
    assert info.operators[0].count == 0  # listed opcode without a node still counts for compat


def _garbage_cases() -> dict[str, bytes]:
    real = zoo("digits_fp32").read_bytes()
    rng = random.Random(7)
    return {
        "empty": b"",
        "8-byte header": b"\x1c\x00\x00\x00TFL3",
        "first 8 bytes of a real model": real[:8],
        "truncated at 50%": real[: len(real) // 2],
        "random bytes": bytes(rng.randrange(256) for _ in range(4096)),
        "wrong identifier": real[:4] + b"XXXX" + real[8:],
        "text": b"this is not a model\n" * 10,
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "8-byte header",
        "first 8 bytes of a real model",
        "truncated at 50%",
        "random bytes",
        "wrong identifier",
        "text",
    ],
)
def test_garbage_raises_model_file_error(case):
    with pytest.raises(ModelFileError, match=r"^not a TFLite flatbuffer: ") as err:
        inspect(_garbage_cases()[case])
    assert err.value.code == "model_file"
    assert err.value.hint


def test_missing_file_raises_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read model file"):
        inspect(tmp_path / "nope.tflite")


def test_every_truncation_raises_model_file_error():
    real = zoo("digits_int8").read_bytes()
    for cut in range(0, len(real) - 1, 61):
        with pytest.raises(ModelFileError):
            inspect(real[:cut])


def test_flipped_bytes_parse_or_raise_model_file_error():
    real = zoo("digits_int8").read_bytes()
    outcomes = {"parsed": 0, "rejected": 0}
    for pos in range(0, len(real), 7):
        data = bytearray(real)
        data[pos] ^= 0xFF
        try:
            inspect(bytes(data))
            outcomes["parsed"] += 1
        except ModelFileError:
            outcomes["rejected"] += 1
    assert outcomes["parsed"] and outcomes["rejected"]  # both happen; nothing else escaped


_REAL: dict[str, bytes] = {}


def _real_int8() -> bytes:
    if "int8" not in _REAL:
        _REAL["int8"] = zoo("digits_int8").read_bytes()
    return _REAL["int8"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12
    ),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    offset_word=st.one_of(st.none(), st.tuples(st.floats(0, 1, exclude_max=True), st.integers())),
)
def test_mutated_model_never_raises_anything_but_model_file_error(edits, cut, offset_word):
    data = bytearray(_real_int8())
    for where, value in edits:
        data[int(where * len(data))] = value
    if offset_word is not None:  # a plausible-looking but wrong 32-bit offset or length
        where, value = offset_word
        pos = int(where * (len(data) - 4))
        data[pos : pos + 4] = (value % 2**32).to_bytes(4, "little")
    if cut is not None:
        data = data[: int(cut * len(data))]
    try:
        info = inspect(bytes(data))
    except ModelFileError as exc:
        assert str(exc).startswith(("not a TFLite flatbuffer", "cannot read"))
    else:
        assert info.size == len(data)
        json.dumps(info.to_dict())


@pytest.mark.parametrize(
    "name", ["digits_fp32", "digits_int8", "digits_dynamic_int8", "digits_edgetpu"]
)
def test_inspect_operators_agrees_with_the_full_inspection(name: str) -> None:
    from agent.runtime.modelfile import inspect_operators
    from tests.modelzoo import model as zoo

    path = zoo(name)
    full, fast = inspect(path), inspect_operators(path)
    assert fast.operators == full.operators
    assert fast.custom_ops == full.custom_ops
    assert fast.is_edgetpu == full.is_edgetpu
    assert fast.size == full.size


def test_inspect_operators_refuses_garbage() -> None:
    from agent.runtime.modelfile import inspect_operators

    with pytest.raises(ModelFileError):
        inspect_operators(b"\x10\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    with pytest.raises(ModelFileError):
        inspect_operators(b"")
