"""Host converter: named recipes over TensorFlow and ai-edge-quantizer, host evaluation of every
variant, a content-hash cache. See docs/convert.md.

    from deploy.convert import Converter, convert, convert_all
    result = convert("digits.keras", "int8", "out/digits_int8.tflite",
                     calibration="data.npz#calib", validation="data.npz#x")
    result.ok, result.size, result.evaluation.accuracy
"""

from __future__ import annotations

from deploy.convert.cache import VariantCache
from deploy.convert.data import Dataset, InputSpec, input_specs, load_data, make_dataset
from deploy.convert.evaluate import Evaluation, evaluate, run_model
from deploy.convert.pipeline import BACKEND_CALLS, BACKENDS, Converter, convert, convert_all
from deploy.convert.progress import Progress
from deploy.convert.recipes import Recipe, get_recipe, load_recipes, recipe_names
from deploy.convert.variant import VariantResult

__all__ = [
    "BACKENDS",
    "BACKEND_CALLS",
    "Converter",
    "Dataset",
    "Evaluation",
    "InputSpec",
    "Progress",
    "Recipe",
    "VariantCache",
    "VariantResult",
    "convert",
    "convert_all",
    "evaluate",
    "get_recipe",
    "input_specs",
    "load_data",
    "load_recipes",
    "make_dataset",
    "recipe_names",
    "run_model",
]
