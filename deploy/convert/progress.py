"""A tiny progress printer for long work (conversion, calibration, evaluation) on stderr.

``Progress(None)`` is silent (``--json``). Lines are prefixed with the elapsed time so a slow
step stands out; counted steps print at most every ``every_s`` seconds plus the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None, *, every_s: float = 1.0) -> None:
        self.stream = stream
        self.every_s = every_s
        self.started = time.monotonic()
        self.lines = 0

    def say(self, message: str) -> None:
        if self.stream is None:
            return
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", file=self.stream, flush=True)
        self.lines += 1

    def counter(self, what: str, total: int) -> Callable[[int], None]:
        """A callback ``done(n)`` that reports ``what n/total`` at a bounded rate."""
        last = [0.0]

        def done(n: int) -> None:
            now = time.monotonic()
            if n >= total or now - last[0] >= self.every_s:
                last[0] = now
                self.say(f"{what} {min(n, total)}/{total}")

        return done

    def scoped(self, prefix: str) -> Callable[[str], None]:
        return lambda message: self.say(f"{prefix}: {message}")
