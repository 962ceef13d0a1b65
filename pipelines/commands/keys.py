"""``portrait keys init|rotate|show-versions|destroy``: the master key file. Never prints a key."""

from __future__ import annotations

import argparse

from profiling.keys import create_key_file, destroy_key_version, load_master_key, rotate_key_file

__all__ = ["register"]


def _init(args: argparse.Namespace) -> None:
    key = create_key_file(args.key_file)
    print(f"created {args.key_file} (mode 600, fingerprint {key.fingerprint}); keep it outside every workspace")


def _rotate(args: argparse.Namespace) -> None:
    version = rotate_key_file(args.key_file)
    key = load_master_key(args.key_file)
    print(f"added key version {version} (fingerprint {key.fingerprint_of(version)}) to {args.key_file}; "
          "rerun the door to rewrite the analytics zone with it")


def _show_versions(args: argparse.Namespace) -> None:
    key = load_master_key(args.key_file)
    for version in key.versions:
        newest = "  (newest)" if version == key.newest_version else ""
        print(f"v{version}  fingerprint {key.fingerprint_of(version)}{newest}")


def _destroy(args: argparse.Namespace) -> None:
    key = load_master_key(args.key_file)
    fingerprint = key.fingerprint_of(args.version) if args.version in key.versions else None
    destroy_key_version(args.key_file, args.version)
    print(f"destroyed key version {args.version} (fingerprint {fingerprint}) in {args.key_file}; "
          "pseudonyms made with it can no longer be recomputed")


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="manage the master key file")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a new master key file (mode 600)")
    init.add_argument("--key-file", required=True, help="path of the new key file, outside every workspace")
    init.set_defaults(handler=_init)
    rotate = actions.add_parser("rotate", help="append a new key version; the door uses the newest")
    rotate.add_argument("--key-file", required=True, help="path of the key file")
    rotate.set_defaults(handler=_rotate)
    show = actions.add_parser("show-versions", help="list key versions and fingerprints (never the key)")
    show.add_argument("--key-file", help="path of the key file (default: the PORTRAIT_MASTER_KEY variable)")
    show.set_defaults(handler=_show_versions)
    destroy = actions.add_parser("destroy", help="remove an old key version for good (unlinks its pseudonyms)")
    destroy.add_argument("--key-file", required=True, help="path of the key file")
    destroy.add_argument("--version", required=True, type=int, help="the version number to destroy")
    destroy.set_defaults(handler=_destroy)
