"""``edgetpu_compiler`` when it is on PATH; otherwise the variant is reported unavailable.

The compiler is only published for x86-64 Debian/Ubuntu (Coral apt repository); it is not
installable here, so the tests drive this module with a fake compiler script (it copies the
input to ``<out_dir>/<stem>_edgetpu.tflite``, as the real one names its output) and check the
command line and the unavailable path. Nothing here has been run against the real compiler.

Command: ``edgetpu_compiler [recipe compiler_args, default -s] -o OUT_DIR MODEL.tflite``; the
real compiler writes ``MODEL_edgetpu.tflite`` and ``MODEL_edgetpu.log`` into OUT_DIR.
``EDGELOOP_EDGETPU_COMPILER`` names another executable.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import EdgeloopError

log = logging.getLogger(__name__)

COMPILER = "edgetpu_compiler"
ENV_COMPILER = "EDGELOOP_EDGETPU_COMPILER"
INSTALL_HINT = (
    "install edgetpu_compiler from the Coral apt repository (x86-64 Debian/Ubuntu: "
    "https://coral.ai/docs/edgetpu/compiler/) and put it on PATH, or set "
    f"{ENV_COMPILER}; the int8 variant is the input it needs"
)
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class CompileOutput:
    model: bytes
    command: list[str]
    log: str


def find_compiler() -> str | None:
    """The compiler executable: $EDGELOOP_EDGETPU_COMPILER, else edgetpu_compiler on PATH."""
    explicit = os.environ.get(ENV_COMPILER)
    if explicit:
        return shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
    return shutil.which(COMPILER)


def unavailable_reason() -> str | None:
    if find_compiler() is None:
        return f"{COMPILER} is not on PATH (and {ENV_COMPILER} is not set)"
    return None


def compiler_version(compiler: str) -> str | None:
    """``edgetpu_compiler --version`` output (part of the cache key), None if it fails."""
    try:
        proc = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else None


def command(compiler: str, model: Path, out_dir: Path, args: Sequence[str] = ("-s",)) -> list[str]:
    return [compiler, *args, "-o", str(out_dir), str(model)]


def compile_model(int8_model: bytes, workdir: Path, args: Sequence[str] = ("-s",)) -> CompileOutput:
    """Compile a full-int8 model; EdgeloopError code "unavailable" without a compiler,
    code "conversion" when it fails."""
    compiler = find_compiler()
    if compiler is None:
        raise EdgeloopError(
            f"{COMPILER} is not on PATH (and {ENV_COMPILER} is not set)",
            hint=INSTALL_HINT,
            code="unavailable",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "model.tflite"
    source.write_bytes(int8_model)
    out_dir = workdir / "out"
    out_dir.mkdir(exist_ok=True)
    cmd = command(compiler, source, out_dir, args)
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EdgeloopError(
            f"{' '.join(cmd)} could not run: {exc}", hint=INSTALL_HINT, code="conversion"
        ) from exc
    output = out_dir / f"{source.stem}_edgetpu.tflite"
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or not output.is_file():
        raise EdgeloopError(
            f"{COMPILER} failed (exit {proc.returncode}): {text[-500:] or 'no output'}",
            hint="check the compiler log; only full-int8 models with supported ops compile",
            code="conversion",
        )
    log_file = out_dir / f"{source.stem}_edgetpu.log"
    if log_file.is_file():
        text = f"{text}\n{log_file.read_text(errors='replace')}".strip()
    return CompileOutput(output.read_bytes(), cmd, text)
