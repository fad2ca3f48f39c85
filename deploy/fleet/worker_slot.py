"""A stable MQTT client id for each host worker on one machine, without flags.

The ingest's MQTT session is persistent, so a worker must come back under the client id it had
to receive what the broker kept for it. ``claim_slot`` takes the lowest free slot ``k`` by an
exclusive ``flock`` on ``{registry}.worker-{k}.lock``; the kernel releases it when the process
dies (even by SIGKILL), so a restarted worker gets the dead one's slot, and two live workers
never share one. The client id is ``edgeloop-{role}-{hostname}-{k}``.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path

MAX_SLOTS = 64


def claim_slot(registry: str | Path, role: str = "collect") -> tuple[str, int]:
    """``(client_id, fd)``: keep ``fd`` open for the life of the worker."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:32] or "host"
    base = Path(registry)
    for k in range(MAX_SLOTS):
        fd = os.open(f"{base}.{role}-{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return f"edgeloop-{role}-{host}-{k}", fd
    raise RuntimeError(f"all {MAX_SLOTS} {role} worker slots of {base} are taken")
