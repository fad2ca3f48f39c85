"""deploy/pki.py, deploy/provision.py, deploy/hostconfig.py and the host TLS flags, on real files
(the broker side is tests/test_secure_fleet.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.config import load_config
from agent.errors import ConfigError
from deploy.cli.common import broker, broker_options
from deploy.hostconfig import load_host_config
from deploy.keys import init_keys
from deploy.mqtt import BrokerAddress
from deploy.pki import Pki, init_pki
from deploy.provision import provision_device, provision_host

ADDRESS = BrokerAddress("mqtt.example.org", 8883)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return init_pki(tmp_path / "pki")


def cn(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_device_provisioning_writes_an_agent_toml_the_agent_loads(pki: Pki, tmp_path: Path) -> None:
    pub = init_keys(tmp_path / "keys")
    done = provision_device(pki, "pi-07", ADDRESS, pub, tmp_path / "pi-07")
    cfg = load_config(done.config, environ={})
    assert cfg.device_id == "pi-07" and cn(done.identity.cert) == "pi-07"
    assert (cfg.broker.host, cfg.broker.port) == ("mqtt.example.org", 8883)
    assert cfg.broker.tls_cert == str(done.identity.cert)
    assert (done.identity.key.stat().st_mode & 0o777) == 0o600
    assert Path(cfg.trust_keys[0]).read_bytes() == pub.read_bytes()


def test_a_name_is_issued_once_across_devices_and_hosts(pki: Pki, tmp_path: Path) -> None:
    provision_host(pki, "ops", ADDRESS, tmp_path / "ops")
    pub = init_keys(tmp_path / "keys")
    with pytest.raises(ConfigError, match="already issued as a host"):
        provision_device(pki, "ops", ADDRESS, pub, tmp_path / "dev-ops")
    assert sorted(pki.issued()["device"]) == []


def test_an_invalid_device_id_is_refused_before_anything_is_written(
    pki: Pki, tmp_path: Path
) -> None:
    pub = init_keys(tmp_path / "keys")
    with pytest.raises(ConfigError, match="invalid"):
        provision_device(pki, "../d1", ADDRESS, pub, tmp_path / "out")
    assert not (tmp_path / "out" / "agent.toml").exists()


def test_revoke_puts_the_serial_on_the_crl(pki: Pki, tmp_path: Path) -> None:
    ident = pki.issue("device", "d9", tmp_path / "d9")
    crl = x509.load_pem_x509_crl(pki.revoke("device", "d9").read_bytes())
    serial = x509.load_pem_x509_certificate(ident.cert.read_bytes()).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    with pytest.raises(ConfigError, match="no device 'd0'"):
        pki.revoke("device", "d0")


def test_init_refuses_to_overwrite_a_pki(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="already holds a PKI"):
        init_pki(pki.dir)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    broker_options(p)
    return p.parse_args(argv)


def test_host_flags_override_the_host_config(pki: Pki, tmp_path: Path) -> None:
    done = provision_host(pki, "ops", BrokerAddress("10.0.0.5", 8884), tmp_path / "ops")
    from_file = broker(_args(["--host-config", str(done.config)]))
    assert (from_file.host, from_file.port) == ("10.0.0.5", 8884)
    assert from_file.tls is not None and from_file.tls.cert_file == str(done.identity.cert)
    moved = broker(_args(["--host-config", str(done.config), "--broker", "127.0.0.1:9"]))
    assert (moved.host, moved.port, moved.tls) == ("127.0.0.1", 9, from_file.tls)
    ca_only = broker(_args(["--tls-ca", str(done.identity.ca)]))
    assert ca_only.tls is not None and ca_only.tls.cert_file is None


def test_bad_host_config_and_tls_flags_say_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "host.toml"
    bad.write_text('[broker]\naddress = "h:1"\ntls_cert = "x"\n')
    with pytest.raises(ConfigError, match="needs the CA too"):
        load_host_config(bad, environ={})
    bad.write_text('[broker]\nadress = "h:1"\n')
    with pytest.raises(ConfigError, match="unknown \\[broker\\] option"):
        load_host_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        broker(_args(["--tls-ca", str(tmp_path / "nope.crt")]))
