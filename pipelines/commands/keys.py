"""``portrait keys init|rotate|show-versions|destroy``: the master key file. Never prints a key."""

from __future__ import annotations

import argparse

from pipelines.dsr_overlay import legacy_tombstone_count
from pipelines.workspace import Workspace
from profiling.errors import KeyFileError
from profiling.keys import create_key_file, destroy_key_version, load_master_key, rotate_key_file

__all__ = ["register"]


def _init(args: argparse.Namespace) -> None:
    key = create_key_file(args.key_file)
    print(f"created {args.key_file} (mode 600, fingerprint {key.fingerprint}, tombstone secret "
          f"{key.tombstone_fingerprint}); keep it outside every workspace")


def _tombstone_note(had_secret: bool, key_file: str) -> None:
    if not had_secret:
        key = load_master_key(key_file)
        print(f"added a tombstone secret (fingerprint {key.tombstone_fingerprint}) to {key_file}: erasures are "
              f"tombstoned with it, and no key version destroyed later can undo them")


def _rotate(args: argparse.Namespace) -> None:
    had_secret = load_master_key(args.key_file).has_tombstone_secret
    version = rotate_key_file(args.key_file)
    key = load_master_key(args.key_file)
    print(f"added key version {version} (fingerprint {key.fingerprint_of(version)}) to {args.key_file}; "
          "rerun the door to rewrite the analytics zone with it")
    _tombstone_note(had_secret, args.key_file)


def _show_versions(args: argparse.Namespace) -> None:
    key = load_master_key(args.key_file)
    for version in key.versions:
        newest = "  (newest)" if version == key.newest_version else ""
        print(f"v{version}  fingerprint {key.fingerprint_of(version)}{newest}")
    if key.has_tombstone_secret:
        print(f"tombstone  fingerprint {key.tombstone_fingerprint}  (never destroyed)")
    else:
        print("tombstone  none: `portrait keys rotate` adds one (erasure needs it)")


def _destroy(args: argparse.Namespace) -> None:
    key = load_master_key(args.key_file)
    for folder in args.workspace or []:
        waiting = legacy_tombstone_count(Workspace(folder))
        if waiting:
            raise KeyFileError(f"workspace {folder} holds {waiting} tombstone(s) made with key versions, before the "
                               f"tombstone secret; run `portrait ingest --raw RAW --workspace {folder} --key-file "
                               f"{args.key_file}` so they are re-made with it, then destroy version {args.version}")
    fingerprint = key.fingerprint_of(args.version) if args.version in key.versions else None
    destroy_key_version(args.key_file, args.version)
    print(f"destroyed key version {args.version} (fingerprint {fingerprint}) in {args.key_file}; "
          "pseudonyms made with it can no longer be recomputed; tombstones are kept by the tombstone secret")
    _tombstone_note(key.has_tombstone_secret, args.key_file)


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
    destroy.add_argument("--workspace", action="append", help="a workspace using this key (repeatable): refuse while "
                         "it holds tombstones made with key versions (before the tombstone secret)")
    destroy.set_defaults(handler=_destroy)
