from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.config import AgentConfig, example_toml, load_config
from agent.errors import ConfigError


@pytest.fixture
def key(tmp_path: Path) -> Path:
    p = tmp_path / "host.pub"
    p.write_text("placeholder public key file\n")
    return p


def test_flags_alone_make_a_valid_config(tmp_path: Path, key: Path) -> None:
    cfg = load_config(
        None,
        overrides={
            "device_id": "pi-01",
            "state_dir": str(tmp_path / "state"),
            "trust_keys": [str(key)],
            "broker.host": "10.0.0.5",
            "broker.port": 8883,
        },
        environ={},
    )
    assert cfg.device_id == "pi-01"
    assert cfg.broker.host == "10.0.0.5"
    assert cfg.broker.port == 8883
    assert cfg.trust_keys == (str(key),)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        'device_id = "bad id/with+wildcard"\n'
        "[broker]\nport = 70000\nprefix = 'a/#'\nbogus = 1\n"
        "[runtime]\ndelegate = 'gpu'\nthreads = -1\n"
        "[telemetry]\ninterval_s = 'soon'\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    text = str(err.value)
    for fragment in (
        "device_id",
        "broker.port",
        "broker.prefix",
        "broker.bogus: unknown option",
        "runtime.delegate",
        "runtime.threads",
        "telemetry.interval_s: expected a number",
        "trust_keys",
    ):
        assert fragment in text, fragment
    assert text.startswith("8 configuration problem(s)")


def test_environment_overrides_file_and_flags_override_environment(
    tmp_path: Path, key: Path
) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(f'device_id = "from-file"\ntrust_keys = ["{key}"]\n[broker]\nport = 1000\n')
    env = {"EDGELOOP_MQTT_PASSWORD": "s3cret", "EDGELOOP_MQTT_PORT": "2000"}
    cfg = load_config(f, environ=env)
    assert cfg.broker.password == "s3cret"
    assert cfg.broker.port == 2000
    assert cfg.to_dict()["broker"]["password"] == "***"
    cfg = load_config(f, overrides={"broker.port": 3000}, environ=env)
    assert cfg.broker.port == 3000


def test_missing_and_invalid_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("device_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_example_lists_every_option_and_parses(tmp_path: Path, key: Path) -> None:
    text = example_toml()
    data = tomllib.loads(text)
    defaults = AgentConfig()
    for section in ("broker", "runtime", "telemetry", "health", "limits", "loadgen", "energy"):
        assert section in data
        for name in getattr(defaults, section).__dataclass_fields__:
            assert name in text, f"{section}.{name} missing from example"
    f = tmp_path / "agent.toml"
    f.write_text(text.replace("/etc/edgeloop/trust/host.pub", str(key)))
    cfg = load_config(f, overrides={"hw_root": str(tmp_path)}, environ={})
    assert cfg.runtime.delegate == "auto"
