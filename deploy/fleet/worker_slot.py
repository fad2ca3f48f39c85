"""A stable MQTT client id for each host worker on one machine, without flags.

The ingest's MQTT session is persistent, so a worker must come back under the client id it had
to receive what the broker kept for it. ``claim_slot`` takes the lowest free slot ``k`` by an
exclusive ``flock`` on ``{registry}.{role}-{k}.lock`` (for a PostgreSQL registry, in the
temp directory under a name derived from its URL); the kernel releases it when the process dies
(even by SIGKILL), so a restarted worker gets the dead one's slot, and two live workers
never share one. The client id is ``edgeloop-{role}-{hostname}-{k}``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

from deploy.fleet.engine import is_url, redact

MAX_SLOTS = 64


def lock_base(registry: str | Path) -> Path:
    """The path the slot lock files are named from."""
    if not is_url(registry):
        return Path(registry)
    digest = hashlib.sha256(redact(str(registry)).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"edgeloop-registry-{digest}"


def claim_slot(registry: str | Path, role: str = "collect") -> tuple[str, int]:
    """``(client_id, fd)``: keep ``fd`` open for the life of the worker."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:32] or "host"
    base = lock_base(registry)
    for k in range(MAX_SLOTS):
        fd = os.open(f"{base}.{role}-{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return f"edgeloop-{role}-{host}-{k}", fd
    raise RuntimeError(f"all {MAX_SLOTS} {role} worker slots of {registry} are taken")
