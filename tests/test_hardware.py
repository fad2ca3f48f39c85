"""agent.board.hardware against captured board trees (tests/hwtrees/) and hand-made edge cases."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.board import hardware
from agent.errors import ConfigError
from tests.hwtrees.capture import capture

TREES = Path(__file__).parent / "hwtrees"

# tree -> what the probe must report (tests/hwtrees/expected.json, beside the trees).
# Accelerators as (device, transport, usb_id or firmware).
EXPECTED: dict[str, dict[str, Any]] = {
    tree: {**want, "accels": [tuple(a) for a in want["accels"]]}
    for tree, want in json.loads((TREES / "expected.json").read_text()).items()
}


def write(root: Path, rel: str, text: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def test_every_captured_tree_has_expectations() -> None:
    trees = {p.name for p in TREES.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert trees == set(EXPECTED)


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_tree_is_probed_as_the_real_board(tree: str) -> None:
    want = EXPECTED[tree]
    info = hardware.detect(TREES / tree)
    assert info.board == want["board"]
    assert info.board_family == want["family"]
    assert info.soc == want["soc"]
    assert info.cpu.arch == want["arch"]
    assert info.cpu.cores == want["cores"]
    assert info.cpu.big_cores == want["big_cores"]
    assert info.cpu.governor == want["governor"]
    assert info.cpu.max_freq_mhz == want["max_freq"]
    assert info.cpu.model == want["model"]
    assert info.memory_mb == want["memory_mb"]
    assert info.vcgencmd is want["vcgencmd"]
    got = [
        (a.device, a.transport, a.detail.get("usb_id"), a.detail.get("firmware"))
        for a in info.accelerators
    ]
    assert got == want["accels"]
    assert all(a.kind == "edgetpu" for a in info.accelerators)
    assert info.hardware_class() == want["cls"]


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_to_dict_is_json_and_carries_the_class(tree: str) -> None:
    info = hardware.detect(TREES / tree)
    out = json.loads(json.dumps(info.to_dict()))
    assert out["hardware_class"] == info.hardware_class()
    assert out["cpu"]["cores"] == info.cpu.cores
    assert [a["device"] for a in out["accelerators"]] == [a.device for a in info.accelerators]
    for accel in out["accelerators"]:
        assert set(accel) == {"kind", "device", "transport", "detail"}


def test_rk3588_big_cores_are_both_a76_clusters() -> None:
    cpu = hardware.detect(TREES / "rock5b-rk3588").cpu
    assert [(c["id"], c["cpus"], c["max_freq_mhz"], c["core_type"]) for c in cpu.clusters] == [
        (0, [0, 1, 2, 3], 1800.0, "Cortex-A55"),
        (1, [4, 5], 2400.0, "Cortex-A76"),
        (2, [6, 7], 2400.0, "Cortex-A76"),
    ]
    assert cpu.big_cores == 4


def test_homogeneous_pi_is_one_cluster_of_all_cores() -> None:
    cpu = hardware.detect(TREES / "rpi5").cpu
    assert len(cpu.clusters) == 1
    assert cpu.clusters[0]["cpus"] == [0, 1, 2, 3]
    assert cpu.big_cores == cpu.cores == 4


def test_edge_tpu_temperature_is_in_the_accelerator_detail() -> None:
    accel = hardware.detect(TREES / "x86-m2-coral").accelerators[0]
    assert accel.detail["path"] == "/dev/apex_0"
    assert accel.detail["temp_c"] == "43.55"
    assert "problem" not in accel.detail


# --- hand-made trees for the cases no captured board shows --------------------------------


def make_cpus(root: Path, freqs_khz: Sequence[int | None], clusters: Sequence[str | None]) -> None:
    write(root, "sys/devices/system/cpu/online", f"0-{len(freqs_khz) - 1}\n")
    for i, (khz, cluster) in enumerate(zip(freqs_khz, clusters, strict=True)):
        base = f"sys/devices/system/cpu/cpu{i}"
        if khz is not None:
            write(root, f"{base}/cpufreq/cpuinfo_max_freq", f"{khz}\n")
        if cluster is not None:
            write(root, f"{base}/topology/cluster_id", f"{cluster}\n")
            write(root, f"{base}/topology/physical_package_id", "0\n")


def test_mainline_kernel_cluster_ids_group_rk3588_the_same_way(tmp_path: Path) -> None:
    make_cpus(tmp_path, [1800000] * 4 + [2400000] * 4, ["0"] * 4 + ["1", "1", "2", "2"])
    cpu = hardware.detect(tmp_path).cpu
    assert [c["cpus"] for c in cpu.clusters] == [[0, 1, 2, 3], [4, 5], [6, 7]]
    assert cpu.big_cores == 4


def test_one_dynamiq_cluster_is_split_by_max_frequency(tmp_path: Path) -> None:
    # Big and little cores under one DSU report the same cluster_id.
    make_cpus(tmp_path, [2000000] * 6 + [2600000] * 2, ["0"] * 8)
    cpu = hardware.detect(tmp_path).cpu
    assert [c["cpus"] for c in cpu.clusters] == [[0, 1, 2, 3, 4, 5], [6, 7]]
    assert cpu.big_cores == 2
    assert cpu.max_freq_mhz == 2600.0


def test_no_topology_files_groups_by_frequency(tmp_path: Path) -> None:
    make_cpus(tmp_path, [1416000] * 4 + [1800000] * 2, [None] * 6)
    cpu = hardware.detect(tmp_path).cpu
    assert [(c["id"], c["cpus"]) for c in cpu.clusters] == [(None, [0, 1, 2, 3]), (None, [4, 5])]
    assert cpu.big_cores == 2


def test_cluster_id_minus_one_falls_back_to_package_id(tmp_path: Path) -> None:
    make_cpus(tmp_path, [1500000] * 4, ["-1"] * 4)
    cpu = hardware.detect(tmp_path).cpu
    assert [(c["id"], c["cpus"]) for c in cpu.clusters] == [(0, [0, 1, 2, 3])]


def test_unknown_frequencies_count_every_core_as_big(tmp_path: Path) -> None:
    make_cpus(tmp_path, [None] * 4, ["0", "0", "1", "1"])
    cpu = hardware.detect(tmp_path).cpu
    assert cpu.max_freq_mhz is None
    assert cpu.big_cores == 4


def test_empty_root_is_a_generic_board_without_crashing(tmp_path: Path) -> None:
    info = hardware.detect(tmp_path)
    assert info.board_family == "generic"
    assert info.board == "generic unknown"
    assert info.cpu.cores == 1 and info.cpu.big_cores == 1
    assert info.cpu.governor is None and info.cpu.max_freq_mhz is None and info.cpu.model is None
    assert info.memory_mb is None
    assert info.thermal_zones == [] and info.accelerators == []
    assert info.vcgencmd is False
    assert info.hardware_class() == "unknown-cpu"
    json.dumps(info.to_dict())


def test_garbage_values_become_none(tmp_path: Path) -> None:
    write(tmp_path, "sys/devices/system/cpu/online", "zero-three\n")
    write(tmp_path, "sys/devices/system/cpu/possible", "0-1\n")
    write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "fast\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "hot\n")
    write(tmp_path, "proc/meminfo", "MemTotal: lots\n")
    (tmp_path / "sys/devices/system/cpu/cpu1/cpufreq").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/cpu1/cpufreq/cpuinfo_max_freq").mkdir()  # a dir
    info = hardware.detect(tmp_path)
    assert info.cpu.cores == 2  # from "possible" when "online" is unreadable
    assert info.cpu.max_freq_mhz is None
    assert info.memory_mb is None
    assert info.thermal_zones == [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": None}]


@pytest.mark.parametrize("bad", ["missing", "a-file"])
def test_root_that_is_not_a_directory_is_a_config_error(tmp_path: Path, bad: str) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError) as err:
        hardware.detect(tmp_path / bad)
    assert "not a directory" in err.value.message
    assert err.value.hint


def test_usb_corals_are_numbered_by_bus_then_device(tmp_path: Path) -> None:
    for name, ids, bus, dev in [
        ("4-2", ("18d1", "9302"), 4, 2),
        ("2-1", ("1a6e", "089a"), 2, 7),
        ("2-1.3", ("18d1", "9302"), 2, 5),
        ("2-1:1.0", ("18d1", "9302"), 2, 5),  # an interface, not a device
        ("1-1", ("2109", "3431"), 1, 2),  # a hub
    ]:
        base = f"sys/bus/usb/devices/{name}"
        write(tmp_path, f"{base}/idVendor", ids[0] + "\n")
        write(tmp_path, f"{base}/idProduct", ids[1] + "\n")
        write(tmp_path, f"{base}/busnum", f"{bus}\n")
        write(tmp_path, f"{base}/devnum", f"{dev}\n")
    accels = hardware.detect(tmp_path).accelerators
    assert [(a.device, a.detail["sysfs"], a.detail["firmware"]) for a in accels] == [
        ("usb:0", "2-1.3", "loaded"),
        ("usb:1", "2-1", "not loaded"),
        ("usb:2", "4-2", "loaded"),
    ]


def test_pci_edge_tpus_come_first_and_decide_the_class(tmp_path: Path) -> None:
    for n in (1, 0):
        write(tmp_path, f"dev/apex_{n}", "")
    write(tmp_path, "sys/bus/usb/devices/2-1/idVendor", "18d1\n")
    write(tmp_path, "sys/bus/usb/devices/2-1/idProduct", "9302\n")
    info = hardware.detect(tmp_path)
    assert [(a.device, a.detail.get("path")) for a in info.accelerators] == [
        ("pci:0", "/dev/apex_0"),
        ("pci:1", "/dev/apex_1"),
        ("usb:0", None),
    ]
    assert info.hardware_class().endswith("-edgetpu-pci")


def test_apex_driver_without_device_node_is_listed_with_the_problem(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/apex/apex_0/temp", "48300\n")
    (accel,) = hardware.detect(tmp_path).accelerators
    assert accel.device == "pci:0"
    assert "udev" in accel.detail["problem"]


@pytest.mark.parametrize(
    ("model", "compatible", "family", "board_id"),
    [
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "", "raspberrypi", "rpi3bp"),
        ("Raspberry Pi 3 Model B Rev 1.2", "", "raspberrypi", "rpi3b"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", "", "raspberrypi", "rpicm4"),
        ("Raspberry Pi 400 Rev 1.0", "", "raspberrypi", "rpi400"),
        ("Raspberry Pi Zero W Rev 1.1", "", "raspberrypi", "rpizerow"),
        ("Raspberry Pi 7 Model Q Rev 2.0", "", "raspberrypi", "rpi-7-model-q"),
        (
            "Google Coral MT8167",
            "google,coral\0mediatek,mt8167\0",
            "coral-devboard",
            "coral-devboard-mini",
        ),
        (
            "Google i.MX8MQ Phanbell",
            "google,imx8mq-phanbell\0fsl,imx8mq\0",
            "coral-devboard",
            "coral-devboard",
        ),
        ("Orange Pi 5", "rockchip,rk3588s-orangepi-5\0rockchip,rk3588s\0", "generic", "rk3588s"),
    ],
)
def test_board_ids_from_the_devicetree(
    tmp_path: Path, model: str, compatible: str, family: str, board_id: str
) -> None:
    write(tmp_path, "sys/firmware/devicetree/base/model", (model + "\0").encode())
    if compatible:
        write(tmp_path, "proc/device-tree/compatible", compatible.encode())
    info = hardware.detect(tmp_path)
    assert (info.board, info.board_family, info.board_id()) == (model, family, board_id)


def test_cpuinfo_model_line_names_a_pi_without_devicetree(tmp_path: Path) -> None:
    write(tmp_path, "proc/cpuinfo", "processor\t: 0\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n")
    assert hardware.detect(tmp_path).board_id() == "rpi4b"


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3", [0, 1, 2, 3]), ("0,2-3", [0, 2, 3]), ("5", [5]), ("", []), ("x", []), (None, [])],
)
def test_parse_cpu_list(text: str | None, cpus: list[int]) -> None:
    assert hardware.parse_cpu_list(text) == cpus


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_capture_of_a_tree_copies_exactly_the_files_read(tree: str, tmp_path: Path) -> None:
    capture(TREES / tree, tmp_path)
    files = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    original = {p.relative_to(TREES / tree) for p in (TREES / tree).rglob("*") if p.is_file()}
    info_txt = Path(".captured/info.txt")
    assert files - {info_txt} == original - {info_txt}
    assert hardware.detect(tmp_path) == hardware.detect(TREES / tree)


def test_detect_on_this_machine_runs_and_matches_its_capture(tmp_path: Path) -> None:
    live = hardware.detect("/")
    assert live.cpu.arch == platform.machine()
    assert live.cpu.cores >= 1
    json.dumps(live.to_dict())
    capture(Path("/"), tmp_path)
    replay = hardware.detect(tmp_path)
    assert replay.cpu.cores == live.cpu.cores
    assert replay.cpu.model == live.cpu.model
    assert replay.board == live.board
    assert [a.device for a in replay.accelerators] == [a.device for a in live.accelerators]
