"""The ops files, run: `systemd-analyze verify` on the unit as installed, and `install-pi.sh`
into a staging root (``--root``), from a generated config and from a provisioned directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import load_config
from deploy.keys import init_keys
from deploy.mqtt import BrokerAddress
from deploy.pki import init_pki
from deploy.provision import provision_device

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "systemd" / "install-pi.sh"
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--no-start", *args],
        env=dict(os.environ) | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_install_into_a_staging_root_writes_the_files_and_changes_nothing_else(
    tmp_path: Path,
) -> None:
    pub = init_keys(tmp_path / "keys")
    root = tmp_path / "root"
    root.mkdir()
    done = install(
        root, "--device-id", "pi-09", "--broker", "mqtt.example.org:8883", "--trust-key", str(pub)
    )
    assert done.returncode == 0, done.stderr
    cfg = tomllib.loads((root / "etc/edgeloop/agent.toml").read_text())
    assert cfg["device_id"] == "pi-09" and cfg["trust_keys"] == ["/etc/edgeloop/trust/host.pub"]
    assert (cfg["broker"]["host"], cfg["broker"]["port"]) == ("mqtt.example.org", 8883)
    assert (root / "etc/edgeloop/trust/host.pub").read_bytes() == pub.read_bytes()
    assert (root / "etc/edgeloop/agent.env").stat().st_mode & 0o777 == 0o600
    unit = root / "etc/systemd/system/edgeloop-agent.service"
    assert unit.read_bytes() == (REPO / "systemd/edgeloop-agent.service").read_bytes()
    assert (root / "etc/udev/rules.d/99-edgeloop-coral.rules").is_file()
    ran = [line for line in done.stdout.splitlines() if line.startswith("would run: ")]
    assert "would run: systemctl daemon-reload" in ran
    assert any(line.startswith("would run: apt-get install") for line in ran)


def test_install_from_a_provisioned_directory_keeps_its_tls_config(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    pub = init_keys(tmp_path / "keys")
    out = tmp_path / "pi-01"
    provision_device(
        pki,
        "pi-01",
        BrokerAddress("mqtt.example.org", 8883),
        pub,
        out,
        install_dir="/etc/edgeloop",
    )
    root = tmp_path / "root"
    root.mkdir()
    done = install(root, "--config-dir", str(out))
    assert done.returncode == 0, done.stderr
    etc = root / "etc/edgeloop"
    assert (etc / "agent.toml").read_text() == (out / "agent.toml").read_text()
    assert (etc / "pi-01.key").stat().st_mode & 0o777 == 0o600
    assert "would run: chown edgeloop:edgeloop /etc/edgeloop/pi-01.key" in done.stdout
    # the paths in it are the installed ones: rebased on the staging root, the agent loads it
    text = (etc / "agent.toml").read_text().replace('"/etc/edgeloop', f'"{etc}')
    (etc / "staged.toml").write_text(text)
    cfg = load_config(etc / "staged.toml", overrides={"state_dir": str(tmp_path)}, environ={})
    assert cfg.broker.tls_key == str(etc / "pi-01.key")


def test_install_refuses_without_a_broker_or_a_config_dir(tmp_path: Path) -> None:
    done = install(tmp_path)
    assert done.returncode == 2 and "--broker HOST:PORT" in done.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)")
def test_the_unit_as_installed_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    pub = init_keys(tmp_path / "keys")
    root = tmp_path / "root"
    root.mkdir()
    assert install(root, "--broker", "h:1", "--trust-key", str(pub)).returncode == 0
    # what systemd needs to resolve the unit's dependencies, and the venv's entry point (the
    # staging install does not build the venv)
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    agent = root / "opt/edgeloop/venv/bin/edge-agent"
    agent.parent.mkdir(parents=True)
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "/etc/systemd/system/edgeloop-agent.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr  # warnings too
