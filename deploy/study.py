"""`edge-deploy study`: the seed table measured on your own device.

For every source x recipe: convert (deploy.convert, cached by content), evaluate on the host
(accuracy with labelled data, else top-1 agreement and SNR against the float model), push the
variant to the chosen device (signed, as any deploy) and measure it there with the agent's
signed ``bench`` command over MQTT (agent/serving/bench.py: TFLite ``benchmark_model``'s
protocol, p50/p95 of ``invoke()`` on the device). Latency is never measured on the host. A
variant that fails to convert, install or bench is a row with its status and error; the others
go on. The writers (Markdown, CSV, JSON, plot) are in deploy/study_table.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.wire.record import Record
from deploy.command import build_command, send_command
from deploy.convert import Converter
from deploy.convert.variant import VariantResult
from deploy.mqtt import BrokerAddress
from deploy.push import push_model

# Short trial gates: the study measures with bench; the trial only has to prove the model loads.
STUDY_GATES = {"min_inferences": 10, "min_seconds": 0.5}


@dataclass(frozen=True)
class StudyRow(Record):
    model: str
    recipe: str
    status: str  # ok | failed | unavailable | not installed | bench failed
    device: str
    size_bytes: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    accuracy: float | None = None  # host, with labels
    agreement: float | None = None  # host, top-1 match with float
    snr_db: float | None = None
    conversion_s: float | None = None
    bench_runs: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class DeviceLink:
    """Where and how to reach the device."""

    broker: BrokerAddress
    device: str
    key: Any  # the host's signing key
    prefix: str = "edgeloop"
    push_timeout_s: float = 600.0
    bench_timeout_s: float = 300.0
    bench_runs: int = 100
    gates: Mapping[str, Any] | None = None


def bench_on_device(link: DeviceLink) -> dict[str, Any]:
    """The agent's benchmark of the model it serves now (its result dict); EdgeloopError when
    the device does not answer, ValueError with its message when the bench failed there."""
    cmd = build_command("bench", link.device, {"runs": link.bench_runs}, link.key)
    reply = send_command(
        link.broker,
        link.device,
        cmd,
        prefix=link.prefix,
        timeout_s=link.bench_timeout_s,
        final=True,
    )
    if reply.status != "ok":
        raise ValueError(f"bench {reply.status} ({reply.code}): {reply.message}")
    result: dict[str, Any] = reply.data["result"]
    return result


def measure(model: str, r: VariantResult, link: DeviceLink) -> StudyRow:
    """One converted variant pushed to the device and benched there."""
    ev = r.evaluation
    row = StudyRow(
        model,
        r.recipe,
        r.status,
        link.device,
        r.size,
        accuracy=ev.accuracy if ev else None,
        agreement=ev.agreement if ev else None,
        snr_db=ev.snr_db if ev else None,
        conversion_s=r.conversion_s,
        error=r.error,
    )
    if not r.ok or r.path is None:
        return row
    pushed = push_model(
        Path(r.path),
        link.device,
        link.broker,
        link.key,
        name=f"study-{model}",
        version=r.recipe,
        prefix=link.prefix,
        recipe=r.recipe,
        progress=None,
        gates=dict(link.gates or STUDY_GATES),
        timeout_s=link.push_timeout_s,
    )
    if not pushed.ok:
        why = f"{pushed.outcome} ({pushed.code}): {pushed.message}"
        return StudyRow(**(row.to_dict() | {"status": "not installed", "error": why}))
    try:
        result = bench_on_device(link)
    except Exception as exc:
        return StudyRow(**(row.to_dict() | {"status": "bench failed", "error": str(exc)}))
    lat = result["latency_ms"]
    measured = {"p50_ms": lat["p50"], "p95_ms": lat["p95"], "bench_runs": result.get("runs")}
    return StudyRow(**(row.to_dict() | measured))


def study(
    sources: Sequence[Path],
    recipes: Sequence[str],
    link: DeviceLink,
    out_dir: Path,
    *,
    calibration: Path | None = None,
    validation: Path | None = None,
    train: Path | None = None,
    backend: str = "auto",
    say: Callable[[str], None] = lambda _: None,
    on_row: Callable[[StudyRow], None] = lambda _: None,
) -> list[StudyRow]:
    rows = []
    total, done, start = len(sources) * len(recipes), 0, time.monotonic()
    for source in sources:
        model = source.stem if source.is_file() else source.name
        conv = Converter(
            source, calibration=calibration, validation=validation, train=train, backend=backend
        )
        for recipe in recipes:
            say(f"[{done + 1}/{total}] {model} {recipe}: converting")
            r = conv.convert(recipe, out_dir / "variants" / f"{model}_{recipe}.tflite")
            if r.ok:
                say(f"[{done + 1}/{total}] {model} {recipe}: {r.size} bytes; on {link.device}")
            row = measure(model, r, link)
            done += 1
            elapsed = time.monotonic() - start
            lat = f", p50 {row.p50_ms:.3f} ms, p95 {row.p95_ms:.3f} ms" if row.p50_ms else ""
            err = f" ({row.error})" if row.error else ""
            say(f"[{done}/{total}] {model} {recipe}: {row.status}{lat}{err}; {elapsed:.0f} s")
            rows.append(row)
            on_row(row)
    return rows
