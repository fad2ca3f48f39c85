"""Where each device stands against its targets: the registry's fleet rows with the status of
the device's current variant (from its class's telemetry roll-up) and the optimizer's last
decision for the class. Used by ``edge-deploy fleet --registry`` and the report."""

from __future__ import annotations

import time
from typing import Any

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import Device, Variant
from deploy.fleet.view import DeviceView
from deploy.loop.candidates import accuracy_drop, float_accuracy
from deploy.loop.optimizer import EnoughRule, enough_telemetry
from deploy.loop.targets import Targets


def target_status(
    registry: Registry,
    device: Device,
    variant: Variant | None,
    targets: Targets | None,
    rule: EnoughRule | None = None,
) -> tuple[str, list[str]]:
    """(status, missed metrics) of the device's current variant on its class:
    ``meets``, ``misses: <what>``, ``measuring (<why>)``, or ``-`` when unknown.

    The variant's size and host accuracy drop are checked at once; device metrics (p95, memory,
    energy) only once the class's roll-up of the variant is enough to judge."""
    if targets is None or variant is None or not device.hardware_class:
        return "-", []
    ct = targets.for_class(device.hardware_class)
    if not ct.set_metrics():
        return "no targets", []
    row = registry.model(variant.model)
    facc = float_accuracy(registry.variants_for(variant.model), row.float_metrics if row else {})
    drop, _basis = accuracy_drop(variant, facc)
    static = ct.check({"size_mb": variant.size_mb, "accuracy_drop": drop})
    stats = registry.class_stats(device.hardware_class, variant.id)
    enough, why = enough_telemetry(stats, rule or EnoughRule())
    missed = static + (ct.check(stats.metrics()) if enough else [])
    if missed:
        return "misses: " + "; ".join(m.describe() for m in missed), [m.metric for m in missed]
    if not enough and any(m in ct.set_metrics() for m in stats.metrics()):
        return f"measuring ({why})", []
    unknown = ct.unknown(stats.metrics() | {"size_mb": variant.size_mb, "accuracy_drop": drop})
    return "meets" + (f" ({', '.join(unknown)} not measured)" if unknown else ""), []


def registry_rows(
    registry: Registry, targets: Targets | None = None, rule: EnoughRule | None = None
) -> list[dict[str, Any]]:
    """One row per registry device: the live-view columns from its stored state, plus
    ``class`` (registry class id), ``targets`` / ``missed`` and ``optimizer`` (the last
    decision for the device's model on its class: action and recipe).

    The status and the decision depend only on (class, variant) and (model, class): each is
    computed once, so thousands of devices cost a few queries, not a few per device."""
    now = time.time()
    variants: dict[str, Variant | None] = {}
    statuses: dict[tuple[str | None, str | None], tuple[str, list[str]]] = {}
    optimizers: dict[tuple[str, str], str] = {}
    rows = []
    for d in registry.devices():
        view = DeviceView(d.id, d.online, dict(d.state), None, d.last_seen)
        row = view.row(now)
        serving = d.status.model
        sha = str(serving.sha256) if serving and serving.sha256 else None
        if sha is not None and sha not in variants:
            variants[sha] = registry.variant_by_sha(sha)
        variant = variants.get(sha) if sha else None
        key = (d.hardware_class, variant.id if variant else None)
        if key not in statuses:
            statuses[key] = target_status(registry, d, variant, targets, rule)
        status, missed = statuses[key]
        model = variant.model if variant else (serving.name if serving else None)
        optimizer = "-"
        if model and d.hardware_class:
            okey = (str(model), d.hardware_class)
            if okey not in optimizers:
                optimizers[okey] = _last_decision(registry, *okey)
            optimizer = optimizers[okey]
        row |= {
            "class": d.hardware_class,
            "model": model or "-",
            "variant": variant.recipe if variant else row["variant"],
            "variant_id": variant.id if variant else None,
            "targets": status,
            "missed": list(missed),
            "optimizer": optimizer,
        }
        rows.append(row)
    return rows


def _last_decision(registry: Registry, model: str, class_id: str) -> str:
    decisions = registry.decisions(model, class_id)
    if not decisions:
        return "-"
    last = decisions[-1]
    chosen = registry.variant(last.variant) if last.variant else None
    return f"{last.action} {chosen.recipe if chosen else ''}".strip()
