"""`edge-deploy pki init | revoke`, `provision`, `broker-config`: a locked-down fleet.

    edge-deploy pki init --dir PKI
    edge-deploy provision DEVICE_ID --pki PKI --broker HOST:8883 --trust-key PUB --out DIR
    edge-deploy provision --host NAME --pki PKI --broker HOST:8884 [--keys DIR] --out DIR
    edge-deploy broker-config --pki PKI --out DIR [--name HOST]... [--bind ADDR]
    edge-deploy pki revoke NAME --pki PKI [--host] [--broker-dir DIR]

Each prints the path a user needs next (last line). docs/transport.md walks through them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_OK
from agent.errors import ConfigError


def cmd_pki(args: argparse.Namespace) -> int:
    from deploy.broker_config import refresh_crls
    from deploy.pki import Pki, init_pki

    if args.pki_command == "init":
        pki = init_pki(args.dir)
        print(f"device CA: {pki.ca_cert('device')}")
        print(f"host CA:   {pki.ca_cert('host')}")
        print(str(pki.dir.resolve()))
        return EXIT_OK
    pki = Pki(args.pki)
    kind = "host" if args.host else "device"
    crl = pki.revoke(kind, args.name)
    if args.broker_dir is not None:
        refresh_crls(pki, Path(args.broker_dir))
        print(f"CRLs copied to {Path(args.broker_dir) / 'tls'}; restart mosquitto to apply")
    print(str(crl))
    return EXIT_OK


def cmd_provision(args: argparse.Namespace) -> int:
    from deploy.mqtt import BrokerAddress
    from deploy.pki import Pki
    from deploy.provision import provision_device, provision_host

    if (args.device_id is None) == (args.host is None):
        raise ConfigError(
            "give either a DEVICE_ID or --host NAME", hint="one identity per provision run"
        )
    pki = Pki(args.pki)
    address = BrokerAddress.parse(args.broker)
    if args.host is not None:
        done = provision_host(
            pki, args.host, address, args.out, keys=args.keys, install_dir=args.install_dir
        )
    else:
        if args.trust_key is None:
            raise ConfigError(
                "a device needs --trust-key PUB",
                hint="the host's public signing key (edge-deploy keys init prints its path)",
            )
        done = provision_device(
            pki,
            args.device_id,
            address,
            args.trust_key,
            args.out,
            install_dir=args.install_dir,
            state_dir=args.state_dir,
            prefix=args.prefix,
        )
    print(f"certificate: {done.identity.cert}")
    print(str(done.config))
    return EXIT_OK


def cmd_broker_config(args: argparse.Namespace) -> int:
    from deploy.broker_config import write_broker_config
    from deploy.pki import Pki

    files = write_broker_config(
        Pki(args.pki),
        args.out,
        names=args.name or None,
        bind=args.bind,
        device_port=args.device_port,
        host_port=args.host_port,
        max_chunk_kib=args.max_chunk_kib,
        prefix=args.prefix,
        user=args.user,
    )
    print(f"acl: {files.acl}")
    print(str(files.conf))
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pki", help="the fleet's certificate authorities")
    ps = p.add_subparsers(dest="pki_command", required=True)
    k = ps.add_parser("init", help="create the device and host CAs")
    k.add_argument("--dir", required=True)
    k = ps.add_parser("revoke", help="revoke a device (or --host) certificate")
    k.add_argument("name", help="device id (or host name with --host)")
    k.add_argument("--pki", required=True)
    k.add_argument("--host", action="store_true", help="NAME is a host identity")
    k.add_argument("--broker-dir", default=None, help="copy the CRLs into this broker-config dir")
    p.set_defaults(func=cmd_pki)

    p = sub.add_parser("provision", help="a device (or --host) identity and its config file")
    p.add_argument("device_id", nargs="?", default=None)
    p.add_argument("--host", default=None, metavar="NAME", help="a host identity instead")
    p.add_argument("--pki", required=True)
    p.add_argument("--broker", required=True, help="HOST:PORT the client connects to")
    p.add_argument("--trust-key", default=None, help="host public signing key (devices)")
    p.add_argument("--keys", default=None, help="signing key directory (hosts)")
    p.add_argument("--out", required=True)
    p.add_argument("--install-dir", default=None, help="where DIR will live (default: --out)")
    p.add_argument("--state-dir", default="/var/lib/edgeloop")
    p.add_argument("--prefix", default="edgeloop")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("broker-config", help="a Mosquitto config and ACL from the PKI")
    p.add_argument("--pki", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--name", action="append", help="broker DNS name or IP (repeat; default localhost)"
    )
    p.add_argument("--bind", default=None, help="listen address (default: all)")
    p.add_argument("--device-port", type=int, default=8883)
    p.add_argument("--host-port", type=int, default=8884)
    p.add_argument("--max-chunk-kib", type=int, default=1024)
    p.add_argument("--prefix", default="edgeloop")
    p.add_argument("--user", default=None, help="user mosquitto runs as (owns data/ and tls/)")
    p.set_defaults(func=cmd_broker_config)
