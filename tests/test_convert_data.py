"""Calibration/validation data loaders: .npz, folders of .npy, folders of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConfigError
from agent.runtime.modelfile import inspect
from deploy.convert.data import InputSpec, input_specs, load_data
from tests.models.make_models import DATA_FILE, MODELS_DIR

DATA = MODELS_DIR / DATA_FILE
IMAGE = InputSpec("image", (1, 8, 8, 1), "float32", ("serving_default_image:0", "image", "arr_0"))
TWO = [
    InputSpec("alpha", (-1, 6), "float32", ("serving_default_alpha:0", "alpha", "arr_0")),
    InputSpec("beta", (-1, 3), "float32", ("serving_default_beta:0", "beta", "arr_1")),
]


def test_specs_of_the_digits_model_use_the_signature_name() -> None:
    specs = input_specs(inspect(MODELS_DIR / "digits_fp32.tflite"))
    assert [s.name for s in specs] == ["image"]
    assert specs[0].shape == (1, 8, 8, 1) and "serving_default_image:0" in specs[0].aliases


def test_npz_role_picks_calib_or_x_and_labels_only_when_they_fit() -> None:
    calib = load_data(DATA, [IMAGE], "calibration")
    val = load_data(DATA, [IMAGE], "validation")
    assert len(calib) == 100 and calib.labels is None  # 'labels' belongs to x (360)
    assert len(val) == 360 and val.labels is not None and val.labels.dtype == np.int64
    assert calib.fingerprint != val.fingerprint
    picked = load_data(f"{DATA}#calib", [IMAGE], "validation")
    assert picked.fingerprint == calib.fingerprint


def test_npz_by_input_name_in_any_order_and_by_position(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 6), dtype=np.float32), rng.random((5, 3), dtype=np.float32)
    np.savez(tmp_path / "named.npz", beta=b, alpha=a, labels=np.eye(5)[[0, 1, 2, 3, 4]])
    named = load_data(tmp_path / "named.npz", TWO)
    assert np.array_equal(named.arrays[0], a) and np.array_equal(named.arrays[1], b)
    assert named.labels is not None and list(named.labels) == [0, 1, 2, 3, 4]  # one-hot decoded
    np.savez(tmp_path / "pos.npz", a, b)  # arr_0, arr_1
    pos = load_data(tmp_path / "pos.npz", TWO)
    assert np.array_equal(pos.arrays[1], b)


def test_npz_errors_say_what_to_do(tmp_path: Path) -> None:
    np.savez(tmp_path / "odd.npz", p=np.zeros((4, 6), np.float32), q=np.zeros((4, 3), np.float32),
             r=np.zeros((4, 3), np.float32))  # fmt: skip
    with pytest.raises(ConfigError, match="cannot tell which") as err:
        load_data(tmp_path / "odd.npz", TWO)
    assert err.value.hint and "#KEY" in err.value.hint
    np.savez(tmp_path / "shape.npz", image=np.zeros((4, 7, 7), np.float32))
    with pytest.raises(ConfigError, match=r"does not fit input 'image'"):
        load_data(tmp_path / "shape.npz", [IMAGE])
    with pytest.raises(ConfigError, match="not found"):
        load_data(tmp_path / "missing.npz", [IMAGE])


def test_samples_without_channel_axis_are_reshaped(tmp_path: Path) -> None:
    np.savez(tmp_path / "flat.npz", image=np.ones((3, 8, 8), np.float64))
    data = load_data(tmp_path / "flat.npz", [IMAGE])
    assert data.arrays[0].shape == (3, 8, 8, 1) and data.arrays[0].dtype == np.float32


def test_npy_folder_one_file_per_input(tmp_path: Path) -> None:
    np.save(tmp_path / "alpha.npy", np.ones((7, 6), np.float32))
    np.save(tmp_path / "beta.npy", np.zeros((7, 3), np.float32))
    np.save(tmp_path / "labels.npy", np.arange(7))
    data = load_data(tmp_path, TWO)
    assert [a.shape for a in data.arrays] == [(7, 6), (7, 3)]
    assert data.labels is not None and len(data.labels) == 7


def test_npy_folder_one_file_per_sample(tmp_path: Path) -> None:
    with np.load(DATA) as npz:
        x = npz["x"][:4]
    for i, sample in enumerate(x):
        np.save(tmp_path / f"sample_{i:03d}.npy", sample)  # (8, 8, 1): no batch axis
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 3]))
    data = load_data(tmp_path, [IMAGE])
    assert data.arrays[0].shape == (4, 8, 8, 1)
    assert np.array_equal(data.arrays[0], x)
    with pytest.raises(ConfigError, match=r"per-sample \.npy files need a single-input model"):
        load_data(tmp_path, TWO)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(2):
            pixels = np.full((16, 20, 3), value, np.uint8)
            image_mod.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    rgb = InputSpec("img", (1, 4, 5, 3), "float32", ("img", "arr_0"))
    data = load_data(tmp_path, [rgb])
    assert data.arrays[0].shape == (4, 4, 5, 3) and data.arrays[0].dtype == np.float32
    assert data.labels is not None and list(data.labels) == [0, 0, 1, 1]
    assert data.arrays[0][0].max() == 0.0 and data.arrays[0][-1].min() == 1.0
    signed = load_data(tmp_path, [rgb], image_range="-1,1")
    assert signed.arrays[0][0].max() == -1.0
    gray_u8 = InputSpec("img", (1, 8, 8, 1), "uint8", ("img",))
    raw = load_data(tmp_path, [gray_u8])
    assert raw.arrays[0].dtype == np.uint8 and raw.arrays[0].shape == (4, 8, 8, 1)
    assert raw.arrays[0][-1].min() == 255


def test_image_folder_needs_an_image_input(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="single NHWC image input"):
        load_data(tmp_path, TWO)
