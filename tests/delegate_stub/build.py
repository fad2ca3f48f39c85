"""Compile stub_delegate.c into a shared library the runtimes' ``load_delegate`` can open.

python -m tests.delegate_stub.build /tmp/out   # prints the library path
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("stub_delegate.c")
LIBRARY_NAME = "libstub_delegate.so"


class CompilerMissingError(RuntimeError):
    """No C compiler on PATH (tests skip)."""


def build_stub(tmpdir: str | Path) -> Path:
    """Compile the stub into ``tmpdir``; raises CompilerMissingError without gcc/cc."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise CompilerMissingError("no gcc or cc on PATH")
    out = Path(tmpdir) / LIBRARY_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-o", str(out), str(SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE.name} failed: {proc.stderr.strip()}")
    return out


def stub_or_skip(tmpdir: str | Path) -> Path:
    """For fixtures: the compiled stub, or a clean pytest skip when there is no compiler."""
    import pytest

    try:
        return build_stub(tmpdir)
    except CompilerMissingError as exc:
        pytest.skip(f"cannot build the stub delegate: {exc}")


if __name__ == "__main__":
    print(build_stub(sys.argv[1] if len(sys.argv) > 1 else "."))
