"""`edge-deploy report`: one self-contained HTML page (plots embedded as PNG) from the registry.

Per hardware class: latency vs host accuracy of every variant with the targets drawn and the
chosen variant marked; latency, memory and energy over time with deploys and rollbacks marked;
then the devices of the class with their target status, and the decision log with each
decision's reason.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Variant
from deploy.fleet.rollup import WindowRow
from deploy.loop.targets import Targets, load_targets


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _chosen(registry: Registry, model: str, cid: str) -> str | None:
    chosen = None
    for d in registry.decisions(model, cid):
        if d.action == "promote":
            chosen = d.variant
    return chosen


def _tradeoff_plot(
    registry: Registry, model: str, cid: str, variants: list[Variant], targets: Targets | None
) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for v in variants:
        stats = registry.class_stats(cid, v.id)
        if stats.p95_ms is not None and v.accuracy is not None:
            points.append((v, stats.p95_ms, v.accuracy * 100))
    if not points:
        return None
    chosen = _chosen(registry, model, cid)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for v, p95, acc in points:
        is_chosen = v.id == chosen
        ax.scatter(
            [p95],
            [acc],
            s=120 if is_chosen else 40,
            marker="*" if is_chosen else "o",
            color="tab:red" if is_chosen else "tab:blue",
            zorder=3,
        )
        ax.annotate(v.recipe, (p95, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ct = targets.for_class(cid) if targets else None
    if ct and ct.p95_ms:
        ax.axvline(ct.p95_ms, color="tab:orange", ls="--", label=f"p95 target {ct.p95_ms} ms")
    row = registry.model(model)
    facc = (row.float_metrics.get("accuracy") if row else None) if row else None
    if ct and ct.max_accuracy_drop is not None and facc is not None:
        floor = facc * 100 - ct.max_accuracy_drop
        ax.axhline(floor, color="tab:green", ls=":", label=f"accuracy floor {floor:.1f} %")
    ax.set_xlabel("measured p95 latency on the class (ms)")
    ax.set_ylabel("host accuracy (%)")
    ax.set_title(f"{cid}: variants measured (star = chosen)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def _timeline_plot(registry: Registry, model: str, cid: str, variants: list[Variant]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for v in variants:
        if v.sha256:
            rows += registry.windows(cid, v.sha256)
    if not rows:
        return None
    rows.sort(key=lambda r: r.ts)
    t0 = rows[0].ts
    fig, axes = plt.subplots(3, 1, figsize=(7, 5.4), sharex=True)
    series = (
        ("p95 (ms)", [r.p95_ms for r in rows]),
        ("RSS (MB)", [r.rss_mb for r in rows]),
        (energy_label(rows), [r.mj_per_inference for r in rows]),
    )
    xs = [r.ts - t0 for r in rows]
    for ax, (label, ys) in zip(axes, series, strict=True):
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=4)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    by_id = {v.id: v for v in variants}
    for dep in registry.deployments_for(cid, model):
        if dep.finished is None:
            continue
        color = {"committed": "tab:green", "rolled_back": "tab:red"}.get(dep.outcome or "", "grey")
        for ax in axes:
            ax.axvline(dep.finished - t0, color=color, alpha=0.5, lw=1)
        recipe = by_id[dep.variant].recipe if dep.variant in by_id else dep.variant
        axes[0].annotate(
            f"{recipe} {dep.outcome}",
            (dep.finished - t0, 0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="bottom",
        )
    axes[-1].set_xlabel("seconds (green: committed, red: rolled back)")
    axes[0].set_title(f"{cid}: telemetry over time", fontsize=10)
    return _png(fig)


def _devices_table(registry: Registry, model: str, cid: str, targets: Targets | None) -> str:
    """The class's devices: what each serves and how that stands against the targets."""
    from deploy.loop.status import registry_rows

    e = html.escape
    rows = [r for r in registry_rows(registry, targets) if r["class"] == cid]
    out = ["<table><tr><th>device</th><th>online</th><th>variant</th><th>targets</th></tr>"]
    for r in rows:
        variant = r["variant"] if r["model"] == model else f"{r['model']}: {r['variant']}"
        online = "yes" if r["online"] else "no"
        out.append(
            f"<tr><td>{e(r['device'])}</td><td>{online}</td><td>{e(str(variant))}</td>"
            f"<td>{e(r['targets'])}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def render(registry: Registry, model: str, targets: Targets | None = None) -> str:
    variants = registry.variants_for(model)
    classes = sorted({d.hardware_class for d in registry.devices() if d.hardware_class})
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>edgeloop report: {e(model)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:left;vertical-align:top}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>edgeloop: {e(model)}</h1>",
        f"<p>generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
        "<h2>Variants (host evaluation)</h2><table><tr><th>recipe</th><th>size KiB</th>"
        "<th>accuracy</th><th>agreement</th><th>SNR dB</th><th>status</th></tr>",
    ]
    for v in variants:
        acc = f"{v.accuracy:.4f}" if v.accuracy is not None else "-"
        agr = f"{v.agreement:.3f}" if v.agreement is not None else "-"
        snr = f"{v.snr_db:.1f}" if v.snr_db is not None else "-"
        status = "ok" if v.available else f"unavailable: {v.unavailable_reason}"
        parts.append(
            f"<tr><td>{e(v.recipe)}</td><td>{v.size / 1024:.1f}</td><td>{acc}</td>"
            f"<td>{agr}</td><td>{snr}</td><td>{e(status)}</td></tr>"
        )
    parts.append("</table>")
    for cid in classes:
        parts.append(f"<h2>{e(cid)}</h2>")
        chosen = _chosen(registry, model, cid)
        cv = registry.variant(chosen) if chosen else None
        parts.append(f"<p>chosen: <b>{e(cv.recipe) if cv else 'none yet'}</b></p>")
        parts.append(_devices_table(registry, model, cid, targets))
        for img in (
            _tradeoff_plot(registry, model, cid, variants, targets),
            _timeline_plot(registry, model, cid, variants),
        ):
            if img:
                parts.append(f"<img src='{img}'>")
        parts.append("<table><tr><th>time</th><th>action</th><th>variant</th><th>reason</th></tr>")
        for d in registry.decisions(model, cid):
            dv = registry.variant(d.variant) if d.variant else None
            when = time.strftime("%H:%M:%S", time.localtime(d.ts))
            parts.append(
                f"<tr><td>{when}</td><td>{e(d.action)}</td><td>{e(dv.recipe if dv else '-')}</td>"
                f"<td>{e(d.reason)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    registry: Registry, model: str, out_dir: Path, targets_path: Path | None = None
) -> Path:
    targets = load_targets(targets_path) if targets_path else None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model}.html"
    path.write_text(render(registry, model, targets), encoding="utf-8")
    return path


def energy_label(rows: list[WindowRow]) -> str:
    """Which energy figure the plot shows: net of idle where the device could separate the model
    from idle, gross (the whole board, idle included) otherwise; measured or estimated."""
    bases = {r.energy_basis or "gross" for r in rows if r.mj_per_inference is not None}
    basis = "net" if bases == {"net"} else "gross" if bases <= {"gross"} else "net/gross"
    how = "" if any(r.energy_measured for r in rows) else ", estimated"
    return f"energy {basis} (mJ/inf{how})".replace(" (", "\n(")
