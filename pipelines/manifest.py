"""Manifests of published folders: each file's name, size and SHA-256, written at publish, checked on read.

``Workspace.publish`` writes ``_manifest.json`` into every folder of what it publishes (the folder
and each subfolder), listing the files directly in that folder. A stage that reads a published
folder checks it first (``Workspace.verified``): a file whose size or SHA-256 differs, a listed
file that is gone, or a file the manifest does not list is a ``DamagedFolderError`` naming the
file, and the stage stops before reading a row. A folder without a manifest (written by a
version that kept none, or whose manifest was removed) is refused the same way: it cannot be
told apart from a damaged one, so the message says which command rebuilds it.

What this protects against: bit rot, truncated copies, a stray edit or a file dropped into a
folder; the damage is found before any row is read. What it does not: someone who can write the
folder can rewrite the manifest too (a manifest is not a signature), and a file changed after
it was checked by a running process is not checked again by that process.

The cost is one SHA-256 pass over each file a process reads (hashing is I/O-bound; a file
already checked by the same process, unchanged in inode, size, mtime and ctime, is not hashed
again). Readers: pyarrow and Spark skip names starting with ``_``, so the manifest is never read
as data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from profiling.errors import WorkspaceError

__all__ = ["MANIFEST", "DamagedFolderError", "verify_folder", "write_manifests"]

MANIFEST = "_manifest.json"
_FORMAT = "portrait-manifest-1"
_CHUNK = 1 << 20

# (path, inode, size, mtime_ns, ctime_ns) -> SHA-256 of a file this process already hashed.
_hashed: dict[tuple[str, int, int, int, int], str] = {}


class DamagedFolderError(WorkspaceError):
    """A published folder does not match its manifest (or has none); the message names the file."""


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    digest = _hashed.get(key)
    if digest is None:
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
        digest = _hashed[key] = hasher.hexdigest()
    return digest


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != MANIFEST and p.is_file())


def write_manifests(folder: Path) -> None:
    """Write ``_manifest.json`` into ``folder`` and each of its subfolders (replacing any already there)."""
    for directory, _, _ in os.walk(folder):
        directory = Path(directory)
        entries = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(directory)}
        (directory / MANIFEST).write_text(json.dumps({"format": _FORMAT, "files": entries}, indent=1,
                                                     sort_keys=True) + "\n", encoding="utf-8")


def verify_folder(folder: Path, *, rebuild: str) -> Path:
    """Check ``folder`` and its subfolders against their manifests; return ``folder``.

    ``rebuild`` says how to rebuild the folder (e.g. "rerun `portrait ingest`"); every error ends
    with it. A folder that does not exist is left to the caller (nothing to check).
    """
    if not folder.is_dir():
        return folder
    for directory, _, _ in os.walk(folder):
        directory = Path(directory)
        manifest = directory / MANIFEST
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8"))
            if listed.get("format") != _FORMAT:
                raise ValueError(listed.get("format"))
            listed = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in listed["files"].items()}
        except FileNotFoundError:
            raise DamagedFolderError(f"{directory} has no {MANIFEST} (written by an older version, or the manifest "
                                     f"was removed), so its files cannot be checked; {rebuild}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DamagedFolderError(f"{manifest} is damaged (not a manifest of this version); {rebuild}") from None
        present = _files(directory)
        for path in present:
            if path.name not in listed:
                raise DamagedFolderError(f"{path} is not listed in {manifest} (added after the folder was "
                                         f"published): remove it, or {rebuild}")
        for name, (size, digest) in listed.items():
            path = directory / name
            if not path.is_file():
                raise DamagedFolderError(f"{path} is listed in {manifest} but missing; {rebuild}")
            if path.stat().st_size != size:
                raise DamagedFolderError(f"{path} is damaged: {path.stat().st_size} bytes where {size} were "
                                         f"published; {rebuild}")
            if _sha256(path) != digest:
                raise DamagedFolderError(f"{path} is damaged: its SHA-256 differs from the one published in "
                                         f"{MANIFEST}; {rebuild}")
    return folder
