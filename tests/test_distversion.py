"""agent.system.distversion: the agent's version lookup agrees with importlib.metadata."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from agent.system.distversion import installed_version


@pytest.mark.parametrize(
    "dist", ["numpy", "paho-mqtt", "paho_mqtt", "psutil", "pyserial", "edgeloop", "PyYAML-nope"]
)
def test_agrees_with_importlib_metadata(dist: str) -> None:
    try:
        expected: str | None = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        expected = None
    installed_version.cache_clear()
    assert installed_version(dist) == expected


def test_reads_a_dist_info_on_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "Some_Runtime-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: some-runtime\nVersion: 1.2.3\n\nbody"
    )
    legacy = tmp_path / "old_pkg-0.9.egg-info"
    legacy.mkdir()
    (legacy / "PKG-INFO").write_text("Name: old-pkg\nVersion: 0.9\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    installed_version.cache_clear()
    try:
        assert installed_version("some-runtime") == "1.2.3"
        assert installed_version("Some.Runtime") == "1.2.3"
        assert installed_version("old-pkg") == "0.9"
        assert installed_version("absent") is None
    finally:
        installed_version.cache_clear()
