"""A throw-away PKI for TLS tests, made with ``cryptography`` at test time.

``make_pki(dirpath)`` writes a CA, a server certificate for 127.0.0.1/localhost, client
certificates (good, expired, revoked, and one from a foreign CA) and a CRL revoking the revoked
one. Keys are EC P-256 (fast to generate). Client certificates carry the device id as CN, which
Mosquitto's ``use_identity_as_username`` turns into the username.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    crl: Path
    server: CertFiles
    good: CertFiles  # CN "dev-good"
    expired: CertFiles  # CN "dev-expired", notAfter yesterday
    revoked: CertFiles  # CN "dev-revoked", listed in the CRL
    foreign: CertFiles  # CN "dev-foreign", signed by another CA
    foreign_ca: Path

    def mosquitto_conf(self, *, crl: bool = True) -> list[str]:
        """Lines for the listener: client certs required, CN becomes the username."""
        lines = [
            f"cafile {self.ca}",
            f"certfile {self.server.cert}",
            f"keyfile {self.server.key}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        if crl:
            lines.append(f"crlfile {self.crl}")
        return lines


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: Key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(cn: str, now: dt.datetime) -> tuple[x509.Certificate, Key]:
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: tuple[x509.Certificate, Key],
    *,
    server: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[x509.Certificate, Key]:
    key = _key()
    ca_cert, ca_key = ca
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _save(dirpath: Path, name: str, pair: tuple[x509.Certificate, Key]) -> CertFiles:
    cert_path, key_path = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    cert_path.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, pair[1])
    return CertFiles(cert_path, key_path)


def make_pki(dirpath: Path) -> Pki:
    dirpath.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = _ca("edgeloop test CA", now)
    other = _ca("foreign CA", now)
    valid = {"not_before": now - dt.timedelta(hours=1), "not_after": now + dt.timedelta(days=1)}
    server = _leaf("localhost", ca, server=True, **valid)
    good = _leaf("dev-good", ca, server=False, **valid)
    revoked = _leaf("dev-revoked", ca, server=False, **valid)
    foreign = _leaf("dev-foreign", other, server=False, **valid)
    expired = _leaf(
        "dev-expired",
        ca,
        server=False,
        not_before=now - dt.timedelta(days=3),
        not_after=now - dt.timedelta(days=1),
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca[0].subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked[0].serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
        .sign(ca[1], hashes.SHA256())
    )
    ca_path = dirpath / "ca.crt"
    ca_path.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    foreign_ca = dirpath / "foreign-ca.crt"
    foreign_ca.write_bytes(other[0].public_bytes(serialization.Encoding.PEM))
    crl_path = dirpath / "ca.crl"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca=ca_path,
        crl=crl_path,
        server=_save(dirpath, "server", server),
        good=_save(dirpath, "dev-good", good),
        expired=_save(dirpath, "dev-expired", expired),
        revoked=_save(dirpath, "dev-revoked", revoked),
        foreign=_save(dirpath, "dev-foreign", foreign),
        foreign_ca=foreign_ca,
    )
