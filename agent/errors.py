"""The one exception family of edgeloop.

Every error says what went wrong (the message) and what to do next (the hint), and carries a
short machine-readable ``code`` that the agent puts in events and the CLI uses for exit status.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base of every error edgeloop raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


class ConfigError(EdgeloopError):
    """Configuration is invalid; the message lists every problem found."""

    code = "config"


class ModelFileError(EdgeloopError):
    """A file is missing, unreadable or not a TFLite flatbuffer."""

    code = "model_file"


class IncompatibleModelError(EdgeloopError):
    """The model cannot run here (operator version, accelerator, input signature)."""

    code = "incompatible"


class RuntimeUnavailableError(EdgeloopError):
    """No usable TFLite runtime (or not the one asked for) is installed."""

    code = "runtime_unavailable"


class DelegateError(EdgeloopError):
    """A delegate that was asked for explicitly could not be loaded or applied."""

    code = "delegate"


class ProbeError(EdgeloopError):
    """The sandboxed first load / smoke inference failed (crash, timeout, bad output)."""

    code = "probe_failed"


class MeterError(EdgeloopError):
    """An energy meter is absent, silent or speaking garbage."""

    code = "meter"


class ManifestError(EdgeloopError):
    """A model manifest was refused; ``code`` is one of the reason codes in agent.wire.Reason
    ("too_large", "malformed", "unknown_key", "bad_signature", "invalid", "expired", "replayed",
    "rollback", "incompatible", "no_space")."""

    code = "invalid"


class ProtocolError(EdgeloopError):
    """An MQTT topic or payload is malformed (bad JSON, wrong types, invalid UTF-8, oversize)."""

    code = "malformed"


class StoreError(EdgeloopError):
    """The on-disk model store refused an operation (bad chunk, index out of range, unknown
    transfer, whole-file hash mismatch, missing model)."""

    code = "store"
