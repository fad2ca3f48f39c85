"""agent.board.thermal: snapshots of captured trees, get_throttled decoding, the vcgencmd seam."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.board import thermal
from agent.errors import ConfigError

TREES = Path(__file__).parent / "hwtrees"

# tree -> (temp_c, temp_source, freq_mhz, governor, throttled, now, since boot, coral temps)
EXPECTED = {
    "rpi4b": (46.7, "cpu-thermal", 600.0, "ondemand", 0x0, [], [], []),
    "rpi5": (51.9, "cpu-thermal", 1500.0, "ondemand", 0x0, [], [], []),
    "rpi-zero2w": (
        39.0,
        "cpu-thermal",
        600.0,
        "ondemand",
        0x50000,
        [],
        ["under-voltage", "throttled"],
        [],
    ),
    "rpi4b-coral-usb": (
        46.7,
        "cpu-thermal",
        600.0,
        "ondemand",
        0x50005,
        ["under-voltage", "throttled"],
        ["under-voltage", "throttled"],
        [],
    ),
    "rpi4b-coral-usb-unloaded": (46.7, "cpu-thermal", 600.0, "ondemand", 0x0, [], [], []),
    "x86-m2-coral": (45.0, "x86_pkg_temp", 700.0, "powersave", None, [], [], [43.55]),
    "coral-devboard": (47.0, "cpu-thermal", 1000.0, "ondemand", None, [], [], [47.3]),
    "rock5b-rk3588": (38.8, "soc-thermal", 408.0, "schedutil", None, [], [], []),
    "this-machine": (None, None, None, None, None, [], [], []),
}


def test_every_captured_tree_has_expectations() -> None:
    trees = {p.name for p in TREES.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert trees == set(EXPECTED)


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_snapshot_of_captured_tree(tree: str) -> None:
    state = thermal.snapshot(TREES / tree)
    temp, source, freq, governor, bits, now, since, coral = EXPECTED[tree]
    assert state.temp_c == temp
    assert state.temp_source == source
    assert state.freq_mhz == freq
    assert state.governor == governor
    assert state.throttled == bits
    assert state.throttled_now == now
    assert state.throttled_since_boot == since
    assert state.coral_temps_c == coral
    out = json.loads(json.dumps(state.to_dict()))
    assert out["throttled"] == bits
    assert out["throttled_hex"] == (hex(bits) if bits is not None else None)


def test_0x50005_is_under_voltage_and_throttled_now_and_since_boot() -> None:
    assert thermal.decode_throttled(0x50005) == (
        ["under-voltage", "throttled"],
        ["under-voltage", "throttled"],
    )


def test_every_flag_decodes_to_its_name() -> None:
    names = ["under-voltage", "arm-frequency-capped", "throttled", "soft-temperature-limit"]
    assert thermal.decode_throttled(0xF000F) == (names, names)
    assert thermal.decode_throttled(0x0) == ([], [])
    assert thermal.decode_throttled(0x8) == (["soft-temperature-limit"], [])
    assert thermal.decode_throttled(0x20000) == ([], ["arm-frequency-capped"])


@given(st.integers(min_value=0, max_value=0xFFFFF))
def test_decoding_keeps_exactly_the_known_bits(bits: int) -> None:
    now, since = thermal.decode_throttled(bits)
    by_name = {name: bit for bit, name in thermal.THROTTLE_FLAGS.items()}
    rebuilt = sum(1 << by_name[n] for n in now) | sum(1 << (by_name[n] + 16) for n in since)
    assert rebuilt == bits & 0xF000F


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("throttled=0x50005\n", 0x50005),
        ("throttled=0x0", 0),
        ("throttled=0xE0008\n", 0xE0008),
        ("throttled=7", 7),
        ("VCHI initialization failed\n", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_throttled(text: str | None, bits: int | None) -> None:
    assert thermal.parse_throttled(text) == bits


def test_runner_is_the_seam_for_vcgencmd() -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return "throttled=0xe0000\n"

    state = thermal.snapshot(TREES / "rpi4b", runner=runner)
    assert calls == [["vcgencmd", "get_throttled"]]
    assert state.throttled == 0xE0000
    assert state.throttled_now == []
    assert state.throttled_since_boot == [
        "arm-frequency-capped",
        "throttled",
        "soft-temperature-limit",
    ]


def test_runner_failure_leaves_throttling_unknown() -> None:
    state = thermal.snapshot(TREES / "rpi4b-coral-usb", runner=lambda argv: None)
    assert (state.throttled, state.throttled_now, state.throttled_since_boot) == (None, [], [])
    assert state.temp_c == 46.7  # the rest of the snapshot is unaffected


def fake_vcgencmd(directory: Path, script: str) -> None:
    exe = directory / "vcgencmd"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_real_vcgencmd_subprocess_on_the_system_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vcgencmd(tmp_path, '[ "$1" = get_throttled ] && echo throttled=0x50005\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    state = thermal.snapshot("/")
    assert state.throttled == 0x50005
    assert state.throttled_now == ["under-voltage", "throttled"]


def test_vcgencmd_that_fails_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What vcgencmd does for a user without access to /dev/vcio.
    fake_vcgencmd(tmp_path, 'echo "VCHI initialization failed" >&2\nexit 255\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert thermal.snapshot("/").throttled is None


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_first_readable_zone_when_none_is_preferred(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", "broken\n")  # no temp file
    write(tmp_path, "sys/class/thermal/thermal_zone1/type", "acpitz\n")
    write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "27800\n")
    write(tmp_path, "sys/class/thermal/thermal_zone2/type", "iwlwifi_1\n")
    write(tmp_path, "sys/class/thermal/thermal_zone2/temp", "41000\n")
    state = thermal.snapshot(tmp_path)
    assert (state.temp_c, state.temp_source) == (27.8, "acpitz")


def test_preferred_zone_wins_over_lower_numbered_ones(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/type", "gpu-thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "40000\n")
    write(tmp_path, "sys/class/thermal/thermal_zone10/type", "cpu_thermal\n")
    write(tmp_path, "sys/class/thermal/thermal_zone10/temp", "55500\n")
    assert thermal.snapshot(tmp_path).temp_c == 55.5


def test_coral_temperatures_in_apex_order(tmp_path: Path) -> None:
    for n, millic in ((10, 50050), (2, 40050), (0, 45300)):
        write(tmp_path, f"sys/class/apex/apex_{n}/temp", f"{millic}\n")
    assert thermal.snapshot(tmp_path).coral_temps_c == [45.3, 40.05, 50.05]


def test_empty_root_snapshot_is_all_unknown(tmp_path: Path) -> None:
    state = thermal.snapshot(tmp_path)
    assert state == thermal.ThermalState(None, None, None, None, [], [], [])


def test_bad_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        thermal.snapshot(tmp_path / "nope")


def test_snapshot_on_this_machine_runs() -> None:
    json.dumps(thermal.snapshot("/").to_dict())
