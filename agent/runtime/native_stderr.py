"""Capture what native code (delegate plugins, the TFLite C++ runtime) writes to fd 2.

libedgetpu and the runtimes print straight to file descriptor 2 ("INFO: Created TensorFlow Lite
XNNPACK delegate for CPU.", USB errors, ...), bypassing Python's ``sys.stderr``. We redirect fd 2
into a temporary file around interpreter construction so the text can be logged at debug level
and put into error messages instead of cluttering the agent's journal.

Caveat: fd 2 is process-wide; output other threads write to stderr during a capture lands in the
capture too (it is logged, not lost). A lock keeps captures from nesting across threads.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # re-entrant: a nested capture in one thread is harmless
MAX_CHARS = 4000


class Captured:
    """Filled in when the ``capture_stderr`` block exits."""

    def __init__(self) -> None:
        self.text = ""


@contextmanager
def capture_stderr() -> Iterator[Captured]:
    """Redirect fd 2 into a temporary file for the duration of the block."""
    captured = Captured()
    with _LOCK, tempfile.TemporaryFile(mode="w+b") as tmp:
        _flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (daemonized oddly): nothing to capture
            yield captured
            return
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                yield captured
            finally:
                _flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            tmp.seek(0)
            raw = tmp.read()
            text = raw.decode("utf-8", "replace").strip()
            captured.text = text if len(text) <= MAX_CHARS else "..." + text[-MAX_CHARS:]


def _flush() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
