"""The fleet's PKI: two certificate authorities, device and host identities, revocation lists.

A PKI directory (``edge-deploy pki init --dir PKI``) holds:

    ca.crt ca.key            the device CA: signs device certificates and the broker's own
    ca.crl                   its revocation list (the device listener's ``crlfile``)
    host-ca.crt host-ca.key  the host CA: signs host identities only (the host listener)
    host-ca.crl
    server.crt server.key    the broker's certificate (``edge-deploy broker-config`` makes it)
    issued.json              every identity issued: kind, serial, revoked

Why two CAs: the broker binds a device's client id to its certificate CN
(``use_username_as_clientid`` on the device listener), so d2's certificate cannot take over
d1's session. Host tools run several clients at once under one identity and need their own
client ids, so they connect on a second listener that only accepts the host CA: a device
certificate cannot reach the listener where client ids are free. Device ids and host names
share one namespace (the broker's user names), so ``issued.json`` refuses a name used by the
other kind. Keys are EC P-256 (fast to make and to handshake on a Pi), private files 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import ConfigError
from agent.wire.topics import valid_id

Key = ec.EllipticCurvePrivateKey
CA_DAYS = 3650
LEAF_DAYS = 825
CRL_DAYS = 3650  # a CRL past its next update makes OpenSSL refuse every client: keep it long
KINDS = ("device", "host")


@dataclass(frozen=True)
class Identity:
    """The three files a client needs: its certificate and key, and the CA that signed the
    broker's certificate (the device CA, for hosts too)."""

    name: str
    cert: Path
    key: Path
    ca: Path


class Pki:
    """An initialised PKI directory (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if not (self.dir / "ca.crt").is_file() or not (self.dir / "host-ca.crt").is_file():
            raise ConfigError(
                f"{self.dir} is not an edgeloop PKI (no ca.crt / host-ca.crt)",
                hint="create one with `edge-deploy pki init --dir DIR`",
            )

    # ---- paths -------------------------------------------------------------------------
    def ca_cert(self, kind: str = "device") -> Path:
        return self.dir / ("ca.crt" if kind == "device" else "host-ca.crt")

    def crl(self, kind: str = "device") -> Path:
        return self.dir / ("ca.crl" if kind == "device" else "host-ca.crl")

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    # ---- issuing -----------------------------------------------------------------------
    def issue(self, kind: str, name: str, out_dir: Path, *, days: int = LEAF_DAYS) -> Identity:
        """A client certificate with CN ``name`` for a device or a host, into ``out_dir``
        (``NAME.crt``, ``NAME.key`` 0600, ``ca.crt``). Refuses a name already issued."""
        _check_name(kind, name)
        index = self._index()
        for other_kind in KINDS:
            if name in index[other_kind]:
                raise ConfigError(
                    f"{name!r} is already issued as a {other_kind}",
                    hint="device ids and host names are broker user names and must be unique; "
                    "pick another name, or revoke it first and use a new one",
                )
        ca_cert, ca_key = self.ca_pair(kind)
        cert, key = leaf_certificate(name, ca_cert, ca_key, server_names=(), days=days)
        out_dir.mkdir(parents=True, exist_ok=True)
        identity = Identity(
            name, out_dir / f"{name}.crt", out_dir / f"{name}.key", out_dir / "ca.crt"
        )
        write_private_key(identity.key, key)
        identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        identity.ca.write_bytes(self.ca_cert("device").read_bytes())
        index[kind][name] = {"serial": format(cert.serial_number, "x"), "revoked": False}
        self._save_index(index)
        return identity

    def issue_server(self, names: list[str], *, days: int = LEAF_DAYS) -> tuple[Path, Path]:
        """The broker's certificate for ``names`` (DNS names or IP addresses), signed by the
        device CA; replaces an older one."""
        if not names:
            raise ConfigError("the broker certificate needs at least one --name")
        ca_cert, ca_key = self.ca_pair("device")
        cert, key = leaf_certificate(
            names[0], ca_cert, ca_key, server_names=tuple(names), days=days
        )
        write_private_key(self.server_key, key)
        self.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self.server_cert, self.server_key

    def revoke(self, kind: str, name: str) -> Path:
        """Add ``name``'s certificate to its CA's CRL; returns the CRL path. The broker reads
        the CRL when it starts: restart it to apply."""
        index = self._index()
        entry = index[kind].get(name)
        if entry is None:
            raise ConfigError(
                f"no {kind} {name!r} was issued from {self.dir}",
                hint=f"issued {kind}s: {', '.join(sorted(index[kind])) or 'none'}",
            )
        entry["revoked"] = True
        self._save_index(index)
        self._write_crl(kind, index)
        return self.crl(kind)

    def issued(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._index()

    def host_names(self) -> list[str]:
        return sorted(n for n, e in self._index()["host"].items() if not e["revoked"])

    # ---- internals ---------------------------------------------------------------------
    def ca_pair(self, kind: str) -> tuple[x509.Certificate, Key]:
        """The CA certificate and key of ``kind`` ("device" or "host")."""
        cert = x509.load_pem_x509_certificate(self.ca_cert(kind).read_bytes())
        key_path = self.ca_cert(kind).with_suffix(".key")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an EC private key")
        return cert, key

    def _index(self) -> dict[str, dict[str, dict[str, Any]]]:
        path = self.dir / "issued.json"
        data: dict[str, dict[str, dict[str, Any]]] = json.loads(path.read_text())
        return data

    def _save_index(self, index: dict[str, dict[str, dict[str, Any]]]) -> None:
        path = self.dir / "issued.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def _write_crl(self, kind: str, index: dict[str, dict[str, dict[str, Any]]]) -> None:
        ca_cert, ca_key = self.ca_pair(kind)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for entry in index[kind].values():
            if entry["revoked"]:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(entry["serial"], 16))
                    .revocation_date(now)
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.crl(kind).with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.crl(kind))


def init_pki(directory: str | Path, *, days: int = CA_DAYS) -> Pki:
    """Create the two CAs and their empty CRLs in ``directory`` (made 0700). Refuses to
    overwrite an existing PKI."""
    d = Path(directory)
    if (d / "ca.key").exists() or (d / "host-ca.key").exists():
        raise ConfigError(
            f"{d} already holds a PKI", hint="use it as it is, or choose another --dir"
        )
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for kind, cn in (("device", "edgeloop device CA"), ("host", "edgeloop host CA")):
        cert, key = _ca(cn, days)
        stem = "ca" if kind == "device" else "host-ca"
        write_private_key(d / f"{stem}.key", key)
        (d / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "issued.json").write_text(json.dumps({k: {} for k in KINDS}) + "\n")
    pki = Pki(d)
    index = pki.issued()
    for kind in KINDS:
        pki._write_crl(kind, index)
    return pki


def _check_name(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown identity kind {kind!r} (known: {', '.join(KINDS)})")
    if not valid_id(name):
        raise ConfigError(
            f"{kind} name {name!r} is invalid",
            hint="use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit "
            "(it is the broker user name and an MQTT topic level)",
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_private_key(path: Path, key: Key) -> None:
    """PKCS#8 PEM, created 0600, fsynced, renamed into place."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _ca(cn: str, days: int) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def leaf_certificate(
    cn: str,
    ca_cert: x509.Certificate,
    ca_key: Key,
    *,
    server_names: tuple[str, ...] = (),
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, Key]:
    """A client certificate (CN ``cn``), or a server one when ``server_names`` are given,
    signed by the CA, valid ``days`` from ``not_before`` (default: an hour ago, for clock
    skew)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key
