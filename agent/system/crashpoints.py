"""Env-gated crash hook for the P1 fault tests (an interrupted install never half-installs).

Code that must survive power loss calls ``crash_point("name")`` at each step that matters. When
the environment variable ``EDGELOOP_CRASH_AT`` names that point, the process kills itself with
SIGKILL on the spot: no ``finally`` blocks, no atexit handlers, no buffered writes flushed, the
closest a test can get to pulling the plug (the page cache survives, so fsync ordering itself is
not exercised; see docs/protocol.md).

Matching: ``EDGELOOP_CRASH_AT=after_chunk:3`` matches exactly the point ``after_chunk:3``;
``EDGELOOP_CRASH_AT=after_chunk`` matches the first point whose name starts with
``after_chunk:`` (or is exactly ``after_chunk``). Several points may be given separated by
commas; the first one reached fires.

Points used by the store: ``after_chunk:<index>``, ``before_finish_rename``,
``after_finish_rename``, ``before_pointer_rename:<pointer>``, ``after_pointer_rename:<pointer>``
(pointer is current, last_good or trial), ``after_set_trial``, ``before_commit``,
``after_commit``. The daemon adds its own (for example ``during_trial``).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV_VAR = "EDGELOOP_CRASH_AT"
EXIT_CODE = 137


def _matches(wanted: str, name: str) -> bool:
    return name == wanted or name.startswith(wanted + ":")


def armed(name: str) -> bool:
    """True if ``EDGELOOP_CRASH_AT`` selects the point ``name``."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return False
    return any(_matches(w.strip(), name) for w in spec.split(",") if w.strip())


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``EDGELOOP_CRASH_AT`` selects ``name``; else return."""
    if not armed(name):
        return
    log.warning("crash point %s reached: killing the process (EDGELOOP_CRASH_AT)", name)
    try:
        os.kill(os.getpid(), signal.SIGKILL)
    finally:  # pragma: no cover - only where SIGKILL cannot be delivered
        os._exit(EXIT_CODE)
