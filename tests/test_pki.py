"""deploy/pki.py, deploy/provision.py, deploy/hostconfig.py and the broker ACL: files and refusals
(no broker; tests/test_secure_fleet.py runs them on a real Mosquitto)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography import x509

from agent.config import load_config
from agent.errors import ConfigError
from deploy.broker_config import acl_text
from deploy.cli.common import broker, broker_options
from deploy.hostconfig import load_host_config
from deploy.keys import init_keys
from deploy.mqtt import BrokerAddress
from deploy.pki import Pki, init_pki
from deploy.provision import provision_device, provision_host


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return init_pki(tmp_path / "pki")


def test_device_certificate_names_the_device_and_chains_to_the_device_ca(
    pki: Pki, tmp_path: Path
) -> None:
    pub = init_keys(tmp_path / "keys")
    done = provision_device(pki, "pi-01", BrokerAddress("mqtt.local", 8883), pub, tmp_path / "d")
    cert = x509.load_pem_x509_certificate(done.identity.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert("device").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=pi-01"
    cert.verify_directly_issued_by(ca)
    assert done.identity.key.stat().st_mode & 0o077 == 0
    cfg = load_config(done.config, overrides={"state_dir": str(tmp_path)}, environ={})
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls_cert) == (
        "mqtt.local",
        8883,
        str(done.identity.cert),
    )


def test_a_name_is_issued_once_across_devices_and_hosts(pki: Pki, tmp_path: Path) -> None:
    provision_host(pki, "ops", BrokerAddress("127.0.0.1", 8884), tmp_path / "ops")
    pub = init_keys(tmp_path / "keys")
    with pytest.raises(ConfigError, match="already issued as a host"):
        provision_device(pki, "ops", BrokerAddress("h", 1), pub, tmp_path / "d")
    assert "ops" not in pki.issued()["device"]


def test_init_refuses_to_overwrite_a_pki(pki: Pki) -> None:
    before = pki.ca_cert().read_bytes()
    with pytest.raises(ConfigError, match="already holds a PKI"):
        init_pki(pki.dir)
    assert pki.ca_cert().read_bytes() == before


def test_revoke_lists_the_serial_in_the_crl_and_unknown_names_are_refused(
    pki: Pki, tmp_path: Path
) -> None:
    ident = pki.issue("device", "pi-02", tmp_path / "d")
    serial = x509.load_pem_x509_certificate(ident.cert.read_bytes()).serial_number
    crl = x509.load_pem_x509_crl(pki.revoke("device", "pi-02").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    with pytest.raises(ConfigError, match="no device 'pi-09'"):
        pki.revoke("device", "pi-09")


def test_acl_binds_devices_by_pattern_and_names_each_host() -> None:
    acl = acl_text(["ops"]).splitlines()
    assert "user ops" in acl and "topic write edgeloop/dev/+/cmd/+" in acl
    assert "pattern write edgeloop/dev/%u/reply/#" in acl
    assert not [line for line in acl if "readwrite" in line or line.endswith(" edgeloop/#")]


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    broker_options(p)
    return p.parse_args(argv)


def test_flags_win_over_the_host_config(pki: Pki, tmp_path: Path) -> None:
    done = provision_host(pki, "ops", BrokerAddress("mqtt.local", 8884), tmp_path / "ops")
    from_file = broker(_args(["--host-config", str(done.config)]))
    assert (from_file.host, from_file.port) == ("mqtt.local", 8884)
    assert from_file.tls is not None and from_file.tls.cert_file == str(done.identity.cert)
    flagged = broker(_args(["--host-config", str(done.config), "--broker", "127.0.0.1:9"]))
    assert (flagged.host, flagged.port, flagged.tls) == ("127.0.0.1", 9, from_file.tls)


def test_host_config_with_an_unknown_option_names_it(tmp_path: Path) -> None:
    path = tmp_path / "h.toml"
    path.write_text('[broker]\naddress = "h:1"\ntls_cafile = "x"\n')
    with pytest.raises(ConfigError, match="tls_cafile"):
        load_host_config(path, environ={})
