"""Telemetry records as an agent sends them, for tests that fill a registry by hand.

Built from the agent's own :class:`agent.wire.status.Telemetry`, so a record here is exactly
what the host parses from the wire (every field present, ``null`` where unknown)."""

from __future__ import annotations

from typing import Any

from agent.wire.status import ModelRef, Telemetry


def telemetry(
    seq: int,
    ts: float,
    *,
    sha: str = "a" * 64,
    p95: float | None = 3.0,
    p50: float | None = None,
    inferences: int = 100,
    window_s: float = 10.0,
    temp_c: float | None = 50.0,
    throttled: int | None = 0,
    rss_mb: float | None = 60.0,
    energy: dict[str, Any] | None = None,
    recipe: str = "int8",
    **fields: Any,
) -> dict[str, Any]:
    """One window of ``inferences`` on the model ``sha``; ``fields`` sets any other field."""
    latency = None if p95 is None else {"p50": p95 * 0.8 if p50 is None else p50, "p95": p95}
    model = ModelRef(sha, "digits", "1", variant={"recipe": recipe}, delegate="cpu")
    t = Telemetry(
        seq=seq, ts=ts, window_s=window_s, inferences=inferences, model=model,
        latency_ms=latency, rss_mb=rss_mb, temp_c=temp_c, throttled=throttled, energy=energy,
    )  # fmt: skip
    return {**t.to_dict(), **fields}
