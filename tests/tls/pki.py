"""A throw-away PKI for TLS tests, made by the product's own deploy/pki.py at test time.

``make_pki(dirpath)`` runs what ``edge-deploy pki init`` and ``provision`` do: the CAs, a broker
certificate for localhost/127.0.0.1, the client certificates "dev-good" and "dev-revoked", and
``pki revoke`` for the latter (its CRL). Only two certificates are test-only: one backdated so it
has expired ("dev-expired", from the same CA) and one issued by another PKI ("dev-foreign").
Client certificates carry the device id as CN, which Mosquitto's ``use_identity_as_username``
turns into the username.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from deploy.pki import init_pki, leaf_certificate, write_private_key


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


def make_pki(dirpath: Path) -> Pki:
    pki = init_pki(dirpath)
    server_cert, server_key = pki.issue_server(["localhost", "127.0.0.1"])
    good = pki.issue("device", "dev-good", dirpath)
    revoked = pki.issue("device", "dev-revoked", dirpath)
    crl = pki.revoke("device", "dev-revoked")
    other = init_pki(dirpath / "foreign")
    foreign = other.issue("device", "dev-foreign", dirpath / "foreign")
    ca_cert, ca_key = pki.ca_pair("device")
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    cert, key = leaf_certificate("dev-expired", ca_cert, ca_key, days=2, not_before=three_days_ago)
    expired = CertFiles(dirpath / "dev-expired.crt", dirpath / "dev-expired.key")
    expired.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(expired.key, key)
    return Pki(
        ca=pki.ca_cert("device"),
        crl=crl,
        server=CertFiles(server_cert, server_key),
        good=CertFiles(good.cert, good.key),
        expired=expired,
        revoked=CertFiles(revoked.cert, revoked.key),
        foreign=CertFiles(foreign.cert, foreign.key),
        foreign_ca=foreign.ca,
    )
