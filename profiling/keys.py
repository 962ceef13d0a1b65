"""The master key file: created private, refused when others can read it, never shown.

The file holds one line, ``portrait-master-key v1 <64 hex digits>`` (256 random bits). It lives
outside the workspace: the key is the "additional information kept separately" that turns
pseudonymized data back into personal data.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from profiling.errors import KeyFileError

__all__ = ["MasterKey", "create_key_file", "load_key_file"]

_HEADER = "portrait-master-key v1"


class MasterKey:
    """256 secret bits. ``repr`` and ``str`` show only a fingerprint, never the key."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise KeyFileError("a master key has exactly 32 bytes")
        self._secret = secret

    @property
    def fingerprint(self) -> str:
        """First 8 bytes (hex) of a hash of the key: tells keys apart without revealing them."""
        return hashlib.sha256(b"portrait key fingerprint\x00" + self._secret).hexdigest()[:16]

    def secret_bytes(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return f"MasterKey(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a MasterKey cannot be pickled")


def create_key_file(path: str | os.PathLike) -> MasterKey:
    """Create a new key file readable by its owner only (mode 0600); refuse to overwrite one."""
    path = Path(path)
    secret = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{_HEADER} {secret.hex()}\n")
    return MasterKey(secret)


def load_key_file(path: str | os.PathLike) -> MasterKey:
    """Read a key file made by ``create_key_file``; refuse one that group or others can access."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} does not exist; create one with `portrait keys init --key-file {path}`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"key file {path} has mode {mode:o}, so others can read it; run `chmod 600 {path}`")
    parts = path.read_text(encoding="ascii", errors="replace").split()
    if len(parts) != 3 or " ".join(parts[:2]) != _HEADER or len(parts[2]) != 64:
        raise KeyFileError(f"key file {path} is not a Portrait key file (expected '{_HEADER} <64 hex digits>')")
    try:
        return MasterKey(bytes.fromhex(parts[2]))
    except ValueError:
        raise KeyFileError(f"key file {path} is not a Portrait key file (the key is not hexadecimal)") from None
