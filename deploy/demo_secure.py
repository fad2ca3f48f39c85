"""`edge-deploy demo --secure`: the demo's fleet under a generated PKI and broker config.

The same commands an operator runs (docs/transport.md): ``pki init``, ``provision`` per device
and for the host, ``broker-config`` on 127.0.0.1 with free ports, then Mosquitto started on the
generated file as it is. Agents get their certificate in ``[broker]``; the host side (collector,
deployer, fleet view) connects on the host listener with the host identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deploy.broker import EmbeddedBroker, free_port
from deploy.broker_config import write_broker_config
from deploy.hostconfig import tls_config
from deploy.mqtt import BrokerAddress
from deploy.pki import Pki, init_pki


@dataclass
class SecureFleet:
    broker: EmbeddedBroker  # the device listener's port
    host: BrokerAddress  # the host listener, with the host identity
    pki: Pki
    certs: Path

    def broker_toml(self, device_id: str) -> str:
        """The agent's ``[broker]`` section: the device listener and its own certificate."""
        ident = self.pki.issue("device", device_id, self.certs / device_id)
        return (
            f'[broker]\nhost = "127.0.0.1"\nport = {self.broker.port}\n'
            f'tls_ca = "{ident.ca}"\ntls_cert = "{ident.cert}"\ntls_key = "{ident.key}"\n'
        )


def start_secure_fleet(workdir: Path) -> SecureFleet:
    pki = init_pki(workdir / "pki")
    certs = workdir / "certs"
    host = pki.issue("host", "demo-host", certs / "demo-host")
    device_port, host_port = free_port(), free_port()
    files = write_broker_config(
        pki,
        workdir / "broker",
        bind="127.0.0.1",
        device_port=device_port,
        host_port=host_port,
        user="root" if os.geteuid() == 0 else None,  # as root Mosquitto drops to "mosquitto"
    )
    broker = EmbeddedBroker(workdir / "broker", device_port).start(conf=files.conf)
    tls = tls_config(str(host.ca), str(host.cert), str(host.key), "demo host identity")
    return SecureFleet(broker, BrokerAddress("127.0.0.1", host_port, tls=tls), pki, certs)
