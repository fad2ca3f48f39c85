"""`edge-deploy keys init | show`: the manifest signing key pair."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.cliutil import EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from deploy import keys

    if args.keys_command == "init":
        print(str(keys.init_keys(args.dir)))
        return EXIT_OK
    info = keys.show(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"key id:      {info['key_id']}")
        print(f"public key:  {info['public_key_path']}")
        print(f"private key: {info['private_key_path']}")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="manifest signing keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    k = ks.add_parser("init", help="create a key pair")
    k.add_argument("--dir", required=True)
    k = ks.add_parser("show", help="show the key id and files")
    k.add_argument("--dir", required=True)
    k.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys)
