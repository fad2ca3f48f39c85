"""LiteRT (``ai-edge-litert``): the preferred runtime, on devices and hosts."""

from __future__ import annotations

from agent.runtime.base import Backend


class LiteRTBackend(Backend):
    name = "ai-edge-litert"
    module_name = "ai_edge_litert.interpreter"
    distributions = ("ai-edge-litert", "ai-edge-litert-nightly")
