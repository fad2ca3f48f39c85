"""``edge-deploy convert SOURCE --recipe NAME --out FILE [--calibration DATA] [--validation DATA]
[--backend auto|tf|aiq] [--json]``; ``--recipe all`` (or a comma list) writes into --out as a
directory. Exit 0 when every asked recipe is ok or unavailable, 1 when one failed.

Converters print to stdout (TensorFlow's SavedModel export does); while converting, file
descriptor 1 points at stderr so ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.convert.pipeline import BACKENDS, Converter
from deploy.convert.progress import Progress
from deploy.convert.recipes import ALL
from deploy.convert.variant import FAILED, VariantResult

EXIT_OK, EXIT_FAILED = 0, 1


def add_convert_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="make quantized variants of a model and evaluate them")
    p.add_argument("source", help="float .tflite, Keras file (.keras/.h5) or SavedModel directory")
    p.add_argument("--recipe", required=True, help="recipe name, comma list, or 'all'")
    p.add_argument("--out", required=True, help="output .tflite (a directory for several)")
    p.add_argument("--calibration", default=None, help="DATA: .npz[#keys], .npy folder, images")
    p.add_argument("--validation", default=None, help="DATA for host evaluation (labels optional)")
    p.add_argument(
        "--train",
        default=None,
        help="labelled DATA for the qat recipe (same formats as --calibration)",
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--recipes-file", default=None, help="recipes JSON (default: packaged)")
    p.add_argument("--image-range", default="0,1", help="float range of image pixels: 0,1 or -1,1")
    p.add_argument("--no-cache", action="store_true", help="convert even when cached")
    p.add_argument("--json", action="store_true", help="print results as JSON (no progress)")
    p.set_defaults(func=convert_main)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 (and sys.stdout) at stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _line(r: VariantResult) -> str:
    if not r.ok:
        return f"{r.recipe:<14} {r.status:<11} {r.error}" + (f" (hint: {r.hint})" if r.hint else "")
    e = r.evaluation
    metrics = "not evaluated"
    if e is not None:
        parts = [
            f"acc {e.accuracy:.4f}" if e.accuracy is not None else None,
            f"agree {e.agreement:.4f}" if e.agreement is not None else None,
            f"snr {e.snr_db:.1f} dB" if e.snr_db is not None else None,
        ]
        metrics = ", ".join(p for p in parts if p) or "no metric"
    runs = ", ".join(x["runtime"] + " " + x["version"] for x in r.min_runtime if x.get("ok"))
    return (
        f"{r.recipe:<14} ok{' (cached)' if r.cached else '':<10} {(r.size or 0) / 1024:8.1f} KiB  "
        f"{r.quantization:<12} {metrics}; {r.conversion_s or 0:.2f}s [{r.backend}] "
        f"-> {r.path}; loads on: {runs or 'none known'}"
    )


def convert_main(args: argparse.Namespace) -> int:
    progress = Progress(None if args.json else sys.stderr)
    several = args.recipe == ALL or "," in args.recipe
    with stdout_to_stderr():
        conv = Converter(
            args.source,
            calibration=args.calibration,
            validation=args.validation,
            train=args.train,
            backend=args.backend,
            cache=not args.no_cache,
            progress=progress,
            recipes_file=args.recipes_file,
            image_range=args.image_range,
        )
        if several:
            results = conv.convert_all(args.recipe, Path(args.out))
        else:
            results = [conv.convert(args.recipe, Path(args.out))]
    if args.json:
        body: Any = [r.to_dict() for r in results] if several else results[0].to_dict()
        print(json.dumps(body, indent=2))
    else:
        for r in results:
            print(_line(r))
    return EXIT_FAILED if any(r.status == FAILED for r in results) else EXIT_OK
