"""agent.runtime.inputs: random inputs follow each input's dtype, quantization and (dynamic)
shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.errors import IncompatibleModelError
from agent.runtime.inputs import input_shape, random_inputs


def detail(
    dtype: Any,
    shape: tuple[int, ...] = (1, 4, 4, 3),
    signature: tuple[int, ...] | None = None,
    scales: list[float] | None = None,
    zero_points: list[int] | None = None,
    axis: int = 0,
) -> dict[str, Any]:
    """An entry shaped like ``Interpreter.get_input_details()`` returns it."""
    scales = scales or []
    zero_points = zero_points if zero_points is not None else [0] * len(scales)
    return {
        "name": "x",
        "index": 0,
        "shape": np.array(shape, dtype=np.int32),
        "shape_signature": np.array(signature if signature is not None else shape, np.int32),
        "dtype": dtype,
        "quantization": (scales[0], zero_points[0]) if len(scales) == 1 else (0.0, 0),
        "quantization_parameters": {
            "scales": np.array(scales, dtype=np.float32),
            "zero_points": np.array(zero_points, dtype=np.int32),
            "quantized_dimension": axis,
        },
    }


def rng() -> np.random.Generator:
    return np.random.default_rng(1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_inputs_are_uniform_in_unit_interval(dtype: Any) -> None:
    (x,) = random_inputs([detail(dtype, (2, 64, 64, 3))], rng())
    assert x.dtype == np.dtype(dtype) and x.shape == (2, 64, 64, 3)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert 0.45 < float(x.mean()) < 0.55  # really spread over [0, 1), not a constant


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point"),
    [
        (np.int8, 1 / 255, -128),
        (np.uint8, 1 / 255, 0),
        (np.int16, 1 / 32768, 0),
        (np.int8, 0.02, 10),
    ],
)
def test_quantized_inputs_dequantize_into_unit_interval(
    dtype: Any, scale: float, zero_point: int
) -> None:
    (q,) = random_inputs(
        [detail(dtype, (1, 32, 32, 3), scales=[scale], zero_points=[zero_point])], rng()
    )
    assert q.dtype == np.dtype(dtype)
    real = (q.astype(np.float64) - zero_point) * scale
    assert real.min() >= -scale / 2 and real.max() <= 1.0 + scale / 2
    assert 0.4 < float(real.mean()) < 0.6
    info = np.iinfo(dtype)
    assert q.min() >= info.min and q.max() <= info.max


def test_quantized_values_are_clipped_to_the_dtype_range() -> None:
    # scale 1/100 would need q up to 100 + 120 = 220 for real 1.0: beyond int8, so clipped.
    (q,) = random_inputs([detail(np.int8, (1, 1000), scales=[0.01], zero_points=[120])], rng())
    assert q.max() == 127 and q.min() >= 120


def test_per_axis_quantization_uses_each_channel_scale() -> None:
    d = detail(np.int8, (1, 50, 2), scales=[1 / 255, 0.5], zero_points=[-128, 0], axis=2)
    (q,) = random_inputs([d], rng())
    assert q[..., 0].max() > 100  # fine scale: many steps
    assert set(np.unique(q[..., 1])) <= {0, 1, 2}  # coarse scale: [0, 1) -> 0, 1 or 2


def test_unquantized_narrow_ints_cover_the_dtype_range() -> None:
    (q,) = random_inputs([detail(np.uint8, (1, 4096))], rng())
    assert q.min() < 10 and q.max() > 245


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_wide_ints_are_small_non_negative_indices(dtype: Any) -> None:
    (q,) = random_inputs([detail(dtype, (1, 100))], rng())
    assert q.dtype == np.dtype(dtype) and q.min() >= 0 and q.max() < 10


def test_bool_inputs_are_both_values() -> None:
    (b,) = random_inputs([detail(np.bool_, (1, 200))], rng())
    assert b.dtype == np.bool_ and b.any() and not b.all()


def test_dynamic_dims_use_allocated_size_or_one() -> None:
    assert input_shape(detail(np.float32, (1, 8, 8, 1), (-1, 8, 8, 1))) == (1, 8, 8, 1)
    assert input_shape(detail(np.float32, (4, 8), (-1, 8))) == (4, 8)
    assert input_shape(detail(np.float32, (-1, 8), (-1, 8))) == (1, 8)
    assert input_shape(detail(np.float32, (), ())) == ()
    (x,) = random_inputs([detail(np.float32, (0, 3), (-1, 3))], rng())
    assert x.shape == (1, 3)


def test_several_inputs_keep_their_order() -> None:
    out = random_inputs([detail(np.float32, (1, 2)), detail(np.int32, (3,))], rng())
    assert [a.dtype for a in out] == [np.float32, np.int32]
    assert [a.shape for a in out] == [(1, 2), (3,)]


def test_same_seed_same_inputs() -> None:
    d = [detail(np.int8, scales=[0.1], zero_points=[0])]
    a = random_inputs(d, np.random.default_rng(7))
    b = random_inputs(d, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0])


def test_string_inputs_are_refused_with_a_clear_error() -> None:
    with pytest.raises(IncompatibleModelError, match="dtype"):
        random_inputs([detail(np.bytes_, (1,))], rng())


@pytest.mark.runtime
@pytest.mark.parametrize("name", ["digits_fp32", "digits_int8"])
def test_inputs_fit_a_real_interpreter(name: str) -> None:
    from agent.runtime import load_model
    from tests.modelzoo import model

    loaded = load_model(model(name), "cpu", threads=1)
    interp = loaded.interpreter
    details = interp.get_input_details()
    inputs = random_inputs(details, rng())
    for d, value in zip(details, inputs, strict=True):
        assert value.dtype == np.dtype(d["dtype"])
        interp.set_tensor(d["index"], value)  # raises on a dtype or shape mismatch
    interp.invoke()
    if name == "digits_int8" and details[0]["quantization"][0] > 0:
        scale, zero_point = details[0]["quantization"]
        real = (inputs[0].astype(np.float64) - zero_point) * scale
        assert real.min() >= -scale and real.max() <= 1 + scale
