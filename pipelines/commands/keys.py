"""``portrait keys ...``: the master key file."""

from __future__ import annotations

import argparse

from profiling.keys import create_key_file

__all__ = ["register"]


def _init(args: argparse.Namespace) -> None:
    key = create_key_file(args.key_file)
    print(f"created {args.key_file} (mode 600, fingerprint {key.fingerprint}); keep it outside every workspace")


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="manage the master key file")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a new master key file (mode 600)")
    init.add_argument("--key-file", required=True, help="path of the new key file, outside every workspace")
    init.set_defaults(handler=_init)
