"""Hardware probe: board, CPU topology, memory, thermal zones, vcgencmd and Edge TPUs.

Every fact is read under a root directory (``hw_root``, default ``/``) so tests and users can
point the probe at a captured tree of a real board (``tests/hwtrees/``). Missing or unreadable
files never raise: the value becomes ``None``. Only a root that is not a directory is an error.
What is read, and the hardware-class scheme, are documented in ``docs/hardware.md``.
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.board.hwroot import HwRoot
from agent.wire.record import Record

log = logging.getLogger(__name__)

CORAL_USB_IDS = {("1a6e", "089a"): "not loaded", ("18d1", "9302"): "loaded"}
"""USB ids of the Coral USB Accelerator: before its firmware is loaded (libedgetpu loads it on
first open; the device then re-enumerates) and after."""

# ARM Ltd. (implementer 0x41) part numbers as printed in /proc/cpuinfo "CPU part".
ARM_PARTS = {
    "0xb76": "ARM1176",
    "0xc07": "Cortex-A7",
    "0xc0f": "Cortex-A15",
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd4d": "Cortex-A715",
    "0xd80": "Cortex-A520",
    "0xd81": "Cortex-A720",
}

# Raspberry Pi devicetree model prefixes -> short board id (first match wins).
PI_BOARD_IDS = (
    ("Raspberry Pi 5 Model B", "rpi5"),
    ("Raspberry Pi 500", "rpi500"),
    ("Raspberry Pi Compute Module 5", "rpicm5"),
    ("Raspberry Pi 4 Model B", "rpi4b"),
    ("Raspberry Pi 400", "rpi400"),
    ("Raspberry Pi Compute Module 4S", "rpicm4s"),
    ("Raspberry Pi Compute Module 4", "rpicm4"),
    ("Raspberry Pi 3 Model B Plus", "rpi3bp"),
    ("Raspberry Pi 3 Model A Plus", "rpi3ap"),
    ("Raspberry Pi 3 Model B", "rpi3b"),
    ("Raspberry Pi Zero 2 W", "rpizero2w"),
    ("Raspberry Pi Zero W", "rpizerow"),
    ("Raspberry Pi Zero", "rpizero"),
    ("Raspberry Pi 2 Model B", "rpi2b"),
)


@dataclass(frozen=True)
class Accelerator(Record):
    kind: str  # "edgetpu"
    device: str  # pycoral device string: "usb:0", "pci:0"
    transport: str  # "usb" | "pci" | "devboard" (soldered on a Coral Dev Board)
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CpuInfo(Record):
    arch: str
    cores: int  # online logical CPUs
    clusters: list[dict[str, Any]]  # {"id", "cpus", "cores", "max_freq_mhz", "core_type"}
    big_cores: int  # CPUs in the fastest cluster(s); all of them when homogeneous
    governor: str | None
    max_freq_mhz: float | None
    model: str | None


@dataclass(frozen=True)
class HardwareInfo:
    board: str
    board_family: str  # "raspberrypi" | "coral-devboard" | "generic"
    cpu: CpuInfo
    memory_mb: int | None
    thermal_zones: list[dict[str, Any]]  # {"zone", "type", "temp_c"}
    vcgencmd: bool
    accelerators: list[Accelerator]
    soc: str | None = None  # e.g. "bcm2711", "rk3588", "imx8mq" (devicetree compatible)

    def board_id(self) -> str:
        """Short board id: "rpi4b", "coral-devboard", else the SoC, else the architecture."""
        if self.board_family == "raspberrypi":
            for prefix, short in PI_BOARD_IDS:
                if self.board.startswith(prefix):
                    return short
            return "rpi-" + _slug(re.sub(r"^Raspberry Pi\s*|\s*Rev [\d.]+$", "", self.board))
        if self.board_family == "coral-devboard":
            return "coral-devboard-mini" if "MT8167" in self.board.upper() else "coral-devboard"
        return _slug(self.soc or self.cpu.arch or "unknown")

    def hardware_class(self) -> str:
        """``<board id>-cpu`` or ``<board id>-edgetpu-<usb|pci>`` (first accelerator listed)."""
        if not self.accelerators:
            return f"{self.board_id()}-cpu"
        first = self.accelerators[0]
        bus = first.device.split(":", 1)[0]
        return f"{self.board_id()}-{first.kind}-{bus}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["board_id"] = self.board_id()
        out["hardware_class"] = self.hardware_class()
        return out


def detect(root: str | Path = "/", *, record: set[str] | None = None) -> HardwareInfo:
    """Probe the hardware under ``root``; raises ConfigError only if root is not a directory."""
    hw = HwRoot(root, record=record)
    cpuinfo = hw.read("proc/cpuinfo") or ""
    board, family, soc = _board(hw, cpuinfo)
    info = HardwareInfo(
        board=board,
        board_family=family,
        cpu=_cpu(hw, cpuinfo),
        memory_mb=_memory_mb(hw),
        thermal_zones=thermal_zones(hw),
        vcgencmd=has_vcgencmd(hw),
        accelerators=_accelerators(hw, family),
        soc=soc,
    )
    log.debug("hardware under %s: %s", hw.path, info.hardware_class())
    return info


# --- board -------------------------------------------------------------------------------


def _cpuinfo_field(cpuinfo: str, name: str) -> str | None:
    """The first value of ``name`` in /proc/cpuinfo (case-sensitive key, any spacing)."""
    m = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    return m.group(1).strip() if m and m.group(1).strip() else None


def _board(hw: HwRoot, cpuinfo: str) -> tuple[str, str, str | None]:
    model = (
        hw.read("proc/device-tree/model")
        or hw.read("sys/firmware/devicetree/base/model")
        or _cpuinfo_field(cpuinfo, "Model")
    )
    compatible_raw = hw.read("proc/device-tree/compatible") or ""
    compatible = [c for c in compatible_raw.split("\x00") if c]
    soc = compatible[-1].split(",", 1)[-1] if compatible else None
    if soc is None and (hardware := _cpuinfo_field(cpuinfo, "Hardware")):
        soc = hardware.lower()
    if model and model.startswith("Raspberry Pi"):
        return model, "raspberrypi", soc
    is_phanbell = "Phanbell" in (model or "") or any(c.endswith("-phanbell") for c in compatible)
    is_mini = "Coral" in (model or "") and (
        "MT8167" in (model or "") or "mediatek,mt8167" in compatible
    )
    if is_phanbell or is_mini:
        return model or "Coral Dev Board", "coral-devboard", soc
    if model:
        return model, "generic", soc
    return f"generic {_arch(hw, cpuinfo)}", "generic", soc


# --- CPU ---------------------------------------------------------------------------------


def parse_cpu_list(text: str | None) -> list[int]:
    """Parse a kernel CPU list such as ``0-3,6`` into ``[0, 1, 2, 3, 6]`` (bad text -> [])."""
    cpus: list[int] = []
    for raw in (text or "").split(","):
        part = raw.strip()
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            return []
    return sorted(set(cpus))


def _arch(hw: HwRoot, cpuinfo: str) -> str:
    if hw.is_system_root:
        return platform.machine() or "unknown"
    flags = _cpuinfo_field(cpuinfo, "flags")
    if flags is not None:
        return "x86_64" if " lm " in f" {flags} " else "i686"
    arm_arch = _cpuinfo_field(cpuinfo, "CPU architecture")
    if arm_arch is not None:
        name = _cpuinfo_field(cpuinfo, "model name") or ""
        if arm_arch.startswith("8") and "ARMv7" not in name:
            return "aarch64"
        return "armv6l" if "ARMv6" in name else "armv7l"
    isa = _cpuinfo_field(cpuinfo, "isa")
    if isa and isa.startswith("rv64"):
        return "riscv64"
    return "unknown"


def _core_types(cpuinfo: str) -> dict[int, str]:
    """CPU index -> core name from the per-processor blocks of /proc/cpuinfo."""
    types: dict[int, str] = {}
    for block in cpuinfo.split("\n\n"):
        idx = _cpuinfo_field(block, "processor")
        if idx is None or not idx.isdigit():
            continue
        part = _cpuinfo_field(block, "CPU part")
        implementer = _cpuinfo_field(block, "CPU implementer")
        if part and implementer == "0x41" and part.lower() in ARM_PARTS:
            types[int(idx)] = ARM_PARTS[part.lower()]
        elif name := _cpuinfo_field(block, "model name"):
            types[int(idx)] = name
    return types


def _cpu(hw: HwRoot, cpuinfo: str) -> CpuInfo:
    base = "sys/devices/system/cpu"
    cpus = parse_cpu_list(hw.read(f"{base}/online")) or parse_cpu_list(hw.read(f"{base}/possible"))
    if not cpus:
        count = len(re.findall(r"^processor\s*:", cpuinfo, re.MULTILINE))
        cpus = list(range(count or 1))
    types = _core_types(cpuinfo)
    groups: dict[tuple[int, float], list[int]] = {}
    freqs: dict[int, float | None] = {}
    for cpu in cpus:
        khz = hw.read_int(f"{base}/cpu{cpu}/cpufreq/cpuinfo_max_freq")
        freqs[cpu] = khz / 1000.0 if khz else None
        cluster = hw.read_int(f"{base}/cpu{cpu}/topology/cluster_id")
        if cluster is None or cluster < 0:
            cluster = hw.read_int(f"{base}/cpu{cpu}/topology/physical_package_id")
        key = (cluster if cluster is not None and cluster >= 0 else -1, freqs[cpu] or 0.0)
        groups.setdefault(key, []).append(cpu)
    clusters: list[dict[str, Any]] = [
        {
            "id": key[0] if key[0] >= 0 else None,
            "cpus": members,
            "cores": len(members),
            "max_freq_mhz": key[1] or None,
            "core_type": types.get(members[0]),
        }
        for key, members in sorted(groups.items(), key=lambda kv: kv[1][0])
    ]
    known = [f for f in freqs.values() if f is not None]
    top = max(known) if known else None
    big = sum(c["cores"] for c in clusters if c["max_freq_mhz"] == top) if top else len(cpus)
    governor = hw.read(f"{base}/cpu{cpus[0]}/cpufreq/scaling_governor") or None
    return CpuInfo(
        arch=_arch(hw, cpuinfo),
        cores=len(cpus),
        clusters=clusters,
        big_cores=big or len(cpus),
        governor=governor,
        max_freq_mhz=top,
        model=_cpu_model(clusters, cpuinfo),
    )


def _cpu_model(clusters: list[dict[str, Any]], cpuinfo: str) -> str | None:
    names: list[str] = []
    for c in clusters:
        if c["core_type"] and c["core_type"] not in names:
            names.append(c["core_type"])
    if names:
        return " + ".join(names)
    return _cpuinfo_field(cpuinfo, "model name")


# --- memory, thermal, vcgencmd -------------------------------------------------------------


def _memory_mb(hw: HwRoot) -> int | None:
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", hw.read("proc/meminfo") or "", re.MULTILINE)
    return int(m.group(1)) // 1024 if m else None


def thermal_zones(hw: HwRoot) -> list[dict[str, Any]]:
    """Every ``thermal_zoneN`` in numeric order: {"zone", "type", "temp_c"}."""
    zones = []
    names = [n for n in hw.listdir("sys/class/thermal") if re.fullmatch(r"thermal_zone\d+", n)]
    for name in sorted(names, key=lambda n: int(n[len("thermal_zone") :])):
        millic = hw.read_int(f"sys/class/thermal/{name}/temp")
        zones.append(
            {
                "zone": name,
                "type": hw.read(f"sys/class/thermal/{name}/type"),
                "temp_c": round(millic / 1000.0, 1) if millic is not None else None,
            }
        )
    return zones


def has_vcgencmd(hw: HwRoot) -> bool:
    """``vcgencmd`` under the root (usr/bin), or on PATH when the root is the real system."""
    if hw.exists("usr/bin/vcgencmd"):
        return True
    return hw.is_system_root and shutil.which("vcgencmd") is not None


# --- accelerators --------------------------------------------------------------------------


def _accelerators(hw: HwRoot, family: str) -> list[Accelerator]:
    """PCIe/M.2 Edge TPUs first (by apex index), then USB ones (by bus and device number)."""
    soldered = family == "coral-devboard"
    found: list[Accelerator] = []
    for pos, (index, detail) in enumerate(_apex_devices(hw)):
        transport = "devboard" if soldered else "pci"
        found.append(Accelerator("edgetpu", f"pci:{pos}", transport, detail | {"index": index}))
    for pos, detail in enumerate(_usb_corals(hw)):
        transport = "devboard" if soldered else "usb"
        found.append(Accelerator("edgetpu", f"usb:{pos}", transport, detail))
    return found


def _apex_devices(hw: HwRoot) -> list[tuple[str, dict[str, str]]]:
    indexes: set[int] = set()
    for name in hw.listdir("dev") + hw.listdir("sys/class/apex"):
        if m := re.fullmatch(r"apex_(\d+)", name):
            indexes.add(int(m.group(1)))
    out = []
    for n in sorted(indexes):
        detail = {"path": f"/dev/apex_{n}"}
        if not hw.exists(f"dev/apex_{n}"):
            detail["problem"] = (
                f"/dev/apex_{n} is missing although the apex driver sees the device: "
                "check the gasket-dkms udev rule and that this user is in the 'apex' group"
            )
        millic = hw.read_int(f"sys/class/apex/apex_{n}/temp")
        if millic is not None:
            detail["temp_c"] = f"{millic / 1000.0:.2f}"
        out.append((str(n), detail))
    return out


def _usb_corals(hw: HwRoot) -> list[dict[str, str]]:
    base = "sys/bus/usb/devices"
    found: list[tuple[tuple[int, int, str], dict[str, str]]] = []
    for name in hw.listdir(base):
        if ":" in name:  # interfaces such as 2-1:1.0
            continue
        vendor = (hw.read(f"{base}/{name}/idVendor") or "").lower()
        product = (hw.read(f"{base}/{name}/idProduct") or "").lower()
        firmware = CORAL_USB_IDS.get((vendor, product))
        if firmware is None:
            continue
        busnum = hw.read_int(f"{base}/{name}/busnum")
        devnum = hw.read_int(f"{base}/{name}/devnum")
        detail = {"usb_id": f"{vendor}:{product}", "sysfs": name, "firmware": firmware}
        if busnum is not None and devnum is not None:
            detail |= {"busnum": str(busnum), "devnum": str(devnum)}
        found.append(((busnum or 0, devnum or 0, name), detail))
    return [detail for _, detail in sorted(found, key=lambda item: item[0])]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-") or "unknown"
