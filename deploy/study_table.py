"""The study's outputs: the seed table in Markdown, every row as CSV and JSON, and a plot.

The seed table has the TFLite model-optimization table's columns (docs/benchmarks.md): top-1
float / PTQ / QAT, latency float / PTQ / QAT, size float / quantized. "PTQ" there is TF's
weight-only (dynamic-range) quantization, so the PTQ column is ``dynamic-int8`` when studied,
else ``int8``; full int8 has its own columns (latency, and speed-up over float) because it is
what buys speed. Accuracy is host top-1 with labels, else top-1 agreement with float (marked
"agr."). Latency is the device's p50.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from deploy.study import StudyRow

log = logging.getLogger(__name__)

PTQ_ORDER = ("dynamic-int8", "int8")
FULL_INT8 = ("int8", "int8-uint8io")


def _by(rows: Sequence[StudyRow], model: str, recipes: Sequence[str]) -> StudyRow | None:
    for recipe in recipes:
        for r in rows:
            if r.model == model and r.recipe == recipe:
                return r
    return None


def _acc(r: StudyRow | None) -> str:
    if r is None:
        return "-"
    if r.accuracy is not None:
        return f"{r.accuracy:.4f}"
    return f"{r.agreement:.4f} agr." if r.agreement is not None else "-"


def _ms(r: StudyRow | None) -> str:
    return f"{r.p50_ms:.3f}" if r is not None and r.p50_ms is not None else "-"


def _mb(r: StudyRow | None) -> str:
    return f"{r.size_bytes / 1e6:.2f}" if r is not None and r.size_bytes else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def seed_table(rows: Sequence[StudyRow]) -> str:
    """Markdown: the seed's columns per model, then every (model, recipe) row."""
    models = list(dict.fromkeys(r.model for r in rows))
    device = rows[0].device if rows else "-"
    out = [
        f"Device `{device}`; latency = p50 of `invoke()` on the device (agent bench), ms; "
        "size MB = 10^6 bytes; PTQ = dynamic-range int8 when studied (as in TF's table), "
        "else full int8.",
        "",
        "| model | top-1 float | top-1 PTQ | top-1 QAT | ms float | ms PTQ | ms QAT | "
        "ms full int8 | MB float | MB quantized | speed-up full int8 | speed-up PTQ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        f32, ptq, qat = _by(rows, m, ["fp32"]), _by(rows, m, PTQ_ORDER), _by(rows, m, ["qat"])
        i8 = _by(rows, m, FULL_INT8)
        quant = ptq or qat or i8
        f_ms = f32.p50_ms if f32 else None
        out.append(
            f"| {m} | {_acc(f32)} | {_acc(ptq)} | {_acc(qat)} | {_ms(f32)} | {_ms(ptq)} | "
            f"{_ms(qat)} | {_ms(i8)} | {_mb(f32)} | {_mb(quant)} | "
            f"{_ratio(f_ms, i8.p50_ms if i8 else None)} | "
            f"{_ratio(f_ms, ptq.p50_ms if ptq else None)} |"
        )
    out += [
        "",
        "| model | recipe | status | size bytes | p50 ms | p95 ms | accuracy | agreement | "
        "SNR dB | size vs float | speed-up vs float (p50) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f32 = _by(rows, r.model, ["fp32"])
        size_ratio = _ratio(f32.size_bytes if f32 else None, r.size_bytes)
        speed = _ratio(f32.p50_ms if f32 else None, r.p50_ms)

        def num(v: float | None, fmt: str = ".4f") -> str:
            return "-" if v is None else format(v, fmt)

        out.append(
            f"| {r.model} | {r.recipe} | {r.status} | {r.size_bytes or '-'} | "
            f"{num(r.p50_ms, '.3f')} | {num(r.p95_ms, '.3f')} | {num(r.accuracy)} | "
            f"{num(r.agreement)} | {num(r.snr_db, '.1f')} | {size_ratio} | {speed} |"
        )
    errors = [f"- {r.model} {r.recipe}: {r.error}" for r in rows if r.error]
    return "\n".join(out + (["", *errors] if errors else [])) + "\n"


def write_csv(rows: Sequence[StudyRow], path: Path) -> None:
    names = [f.name for f in fields(StudyRow)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow(r.to_dict())


def write_plot(rows: Sequence[StudyRow], path: Path) -> bool:
    """Device p50 against size, one marker per variant, labelled by recipe. False (and a
    log line) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in dict.fromkeys(r.model for r in rows):
        pts = [
            (r.recipe, r.size_bytes / 1e6, r.p50_ms)
            for r in rows
            if r.model == model and r.p50_ms and r.size_bytes
        ]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], label=model)
        for recipe, x, y in pts:
            ax.annotate(recipe, (x, y), fontsize=7)
    ax.set_xlabel("size (MB)")
    ax.set_ylabel(f"p50 on {rows[0].device if rows else 'device'} (ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("edge-deploy study: device latency vs size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(rows: Sequence[StudyRow], out: Path) -> dict[str, Path]:
    """study.md, study.csv, study.json (and study.png when matplotlib is there) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "study.md", "csv": out / "study.csv", "json": out / "study.json"}
    paths["markdown"].write_text(seed_table(rows))
    write_csv(rows, paths["csv"])
    paths["json"].write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    if write_plot(rows, out / "study.png"):
        paths["plot"] = out / "study.png"
    return paths
