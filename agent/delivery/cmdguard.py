"""The device's side of signed commands: the trusted state agent/wire/signed.py checks against.

``command_auth.json`` in the state directory holds, per host key, the highest command ``seq``
accepted, and the clock floor (the newest accepted command ``ts``: a device whose clock was
reset does not take old commands for fresh ones). It is written atomically after each accepted
command; if the disk is full the in-memory state still refuses replays until a restart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.system.atomicfile import atomic_write
from agent.wire.ed25519 import PublicKey
from agent.wire.messages import Command
from agent.wire.signed import Accepted, needs_signature, verify_command

log = logging.getLogger(__name__)

FILE_NAME = "command_auth.json"


class CommandGuard:
    def __init__(
        self,
        state_dir: str | Path,
        trust_keys: Mapping[str, PublicKey],
        device_id: str,
        hardware_class: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.trust_keys = trust_keys
        self.device_id = device_id
        self.hardware_class = hardware_class
        self.clock = clock
        self.floor, self.seq = self._load()

    def _load(self) -> tuple[float, dict[str, int]]:
        try:
            data: Any = json.loads(self.path.read_text())
            floor = float(data["floor"])
            seq = {str(k): int(v) for k, v in data["seq"].items()}
        except FileNotFoundError:
            return 0.0, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unreadable trusted state: refuse every signed command until it is fixed, rather
            # than forget the counters (that would re-open replays).
            log.error("%s is unreadable (%s): signed commands are refused", self.path, exc)
            return float("inf"), {}
        return floor, seq

    def check(self, cmd: Command) -> Accepted | None:
        """Verify ``cmd`` if its verb needs a signature (raises ProtocolError with the reason)
        and record it; None for verbs that stay unsigned."""
        if not needs_signature(cmd.verb, cmd.args):
            return None
        accepted = verify_command(
            cmd.verb,
            cmd.id,
            cmd.args,
            cmd.ts,
            cmd.auth,
            device_id=self.device_id,
            hardware_class=self.hardware_class,
            trust_keys=self.trust_keys,
            now=self.clock(),
            clock_floor=self.floor,
            last_seq=self.seq,
        )
        self.seq[accepted.key_id] = accepted.seq
        self.floor = max(self.floor, accepted.ts)
        try:
            body = json.dumps({"floor": self.floor, "seq": self.seq}, sort_keys=True)
            atomic_write(self.path, body.encode())
        except OSError as exc:
            log.error("cannot persist %s (%s): replays are refused until a restart", self.path, exc)
        return accepted
