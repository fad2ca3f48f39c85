"""Edge TPU (Coral) specifics: the libedgetpu name per platform, where to find it, device strings.

Mirrors pycoral: ``load_delegate(library, {"device": "usb" | "usb:N" | "pci" | "pci:N" | ":N"})``
with ``libedgetpu.so.1`` on Linux, ``libedgetpu.1.dylib`` on macOS and ``edgetpu.dll`` on
Windows. Without a ``device`` option libedgetpu takes the first Edge TPU it enumerates.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import re
from pathlib import Path

from agent.errors import ConfigError

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
ENV_EDGETPU_LIB = "EDGELOOP_EDGETPU_LIB"

LIBRARY_NAMES = {
    "Linux": ("libedgetpu.so.1", "libedgetpu.so.1.0"),
    "Darwin": ("libedgetpu.1.dylib",),
    "Windows": ("edgetpu.dll",),
}

# Relative to the root; the multiarch dirs Debian/Raspberry Pi OS/Mendel use, then the rest.
LIBRARY_DIRS = (
    "usr/lib/aarch64-linux-gnu",
    "usr/lib/arm-linux-gnueabihf",
    "usr/lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "lib/arm-linux-gnueabihf",
    "lib/x86_64-linux-gnu",
    "usr/lib",
    "usr/lib64",
    "usr/local/lib",
    "lib",
    "lib64",
    "opt/homebrew/lib",
)

INSTALL_HINT = (
    "install the Edge TPU runtime: apt-get install libedgetpu1-std "
    "(Coral apt repo, https://coral.ai/software/#debian-packages), or set "
    f"{ENV_EDGETPU_LIB} to the library path"
)

_DEVICE = re.compile(r"^(?:(?:usb|pci)(?::\d+)?|:\d+)$")


def library_names(system: str | None = None) -> tuple[str, ...]:
    """The file names libedgetpu has on this (or the given) platform.system()."""
    return LIBRARY_NAMES.get(system or platform.system(), LIBRARY_NAMES["Linux"])


def find_edgetpu_library(root: str | Path = "/") -> str | None:
    """The path of libedgetpu under ``root`` (usual lib dirs), else None.

    With ``root == "/"`` the dynamic loader's view (``ctypes.util.find_library``) is asked too;
    then the result may be a bare name such as ``libedgetpu.so.1`` that ``dlopen`` resolves.
    """
    base = Path(root)
    names = library_names()
    for rel in LIBRARY_DIRS:
        for name in names:
            candidate = base / rel / name
            if candidate.exists():
                return str(candidate)
    if base.resolve() == Path("/").resolve():
        found = ctypes.util.find_library("edgetpu")
        if found:
            return found
    return None


def resolve_library(explicit: str | None, root: str | Path = "/") -> str | None:
    """An explicit library wins, then env EDGELOOP_EDGETPU_LIB, then find_edgetpu_library."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_EDGETPU_LIB, "").strip()
    if env:
        return env
    return find_edgetpu_library(root)


def validate_device(device: str | None) -> str | None:
    """Check a pycoral device string; raises ConfigError for anything else."""
    if device is None or device == "":
        return None
    if not _DEVICE.match(device):
        raise ConfigError(
            f"invalid Edge TPU device {device!r}",
            hint="use usb, usb:N, pci, pci:N or :N (N counts from 0)",
        )
    return device


def delegate_options(device: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The options passed to libedgetpu's ``tflite_plugin_create_delegate``."""
    opts = dict(extra or {})
    if device:
        opts["device"] = device
    return opts
