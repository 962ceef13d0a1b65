"""The master key: versions in a private file (or the environment), per-domain keys by HKDF, never shown.

A key file holds one line per key version, ``portrait-master-key v<N> <64 hex digits>`` (256
random bits each); a file made before versions existed holds the single line of version 1 and
stays valid. The file lives outside the workspace: the key is the "additional information kept
separately" that turns pseudonymized data back into personal data. Instead of a file, the
environment variable ``PORTRAIT_MASTER_KEY`` may hold the key as 64 hex digits (version 1) or as
``<N>:<64 hex>`` entries separated by commas.

Pseudonyms are never computed with the master secret itself: ``derive_key`` gives each
(domain, version) its own 32-byte key with HKDF-SHA256, so pseudonyms of different domains
cannot be joined, and destroying a version (``destroy_key_version``) makes every pseudonym made
with it impossible to recompute from an identifier (the pseudonyms are then unlinked).

Tombstones of erased persons must outlive every version, so the file also holds one unversioned
line ``portrait-tombstone-key <64 hex digits>``: the TOMBSTONE domain's key is derived from it
alone (``derive_key(key, TOMBSTONE_DOMAIN)``), ``destroy_key_version`` never removes it, and
``create_key_file`` writes it. A file made before it existed gains it at the next
``rotate_key_file``, ``destroy_key_version`` or ``add_tombstone_secret`` (which erasure calls).
In ``PORTRAIT_MASTER_KEY`` it is the entry ``tombstone:<64 hex>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from profiling.errors import KeyFileError

__all__ = [
    "ENV_VAR",
    "TOMBSTONE_DOMAIN",
    "MasterKey",
    "add_tombstone_secret",
    "create_key_file",
    "load_key_file",
    "load_master_key",
    "derive_key",
    "rotate_key_file",
    "destroy_key_version",
]

ENV_VAR = "PORTRAIT_MASTER_KEY"
_PREFIX = "portrait-master-key"
_TOMBSTONE_PREFIX = "portrait-tombstone-key"
_LINE = re.compile(r"portrait-master-key v([1-9][0-9]{0,5}) ([0-9a-fA-F]{64})")
_TOMBSTONE_LINE = re.compile(r"portrait-tombstone-key ([0-9a-fA-F]{64})")
_ENV_ENTRY = re.compile(r"(?:([1-9][0-9]{0,5}|tombstone):)?([0-9a-fA-F]{64})")
# The one domain keyed by the tombstone secret instead of a version (``profiling.pseudonyms.TOMBSTONE``).
TOMBSTONE_DOMAIN = "tombstone"
_HOW_TO_CREATE = "create one with `portrait keys init --key-file PATH` (outside every workspace) " \
                 f"or set {ENV_VAR} to 64 hex digits"


def _fingerprint(secret: bytes) -> str:
    return hashlib.sha256(b"portrait key fingerprint\x00" + secret).hexdigest()[:16]


class MasterKey:
    """Key versions (number -> 32 secret bytes) and the tombstone secret. ``repr`` and ``str`` show only fingerprints.

    ``MasterKey(secret)`` is a key with the single version 1 and no tombstone secret.

    >>> key = MasterKey(bytes(32), tombstone_secret=bytes(range(32)))
    >>> key.versions, key.newest_version, key.has_tombstone_secret
    ((1,), 1, True)
    >>> "00" * 32 in repr(key)
    False
    """

    __slots__ = ("_secrets", "_tombstone")

    def __init__(self, secret: bytes | Mapping[int, bytes], *, tombstone_secret: bytes | None = None) -> None:
        versions = dict(secret) if isinstance(secret, Mapping) else {1: secret}
        if not versions:
            raise KeyFileError("a master key needs at least one version")
        for version, value in versions.items():
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise KeyFileError("key versions are integers >= 1")
            if not isinstance(value, bytes) or len(value) != 32:
                raise KeyFileError("a master key version has exactly 32 bytes")
        if tombstone_secret is not None and (not isinstance(tombstone_secret, bytes) or len(tombstone_secret) != 32):
            raise KeyFileError("a tombstone secret has exactly 32 bytes")
        self._secrets = dict(sorted(versions.items()))
        self._tombstone = tombstone_secret

    @property
    def has_tombstone_secret(self) -> bool:
        return self._tombstone is not None

    @property
    def tombstone_fingerprint(self) -> str | None:
        """Fingerprint of the tombstone secret (None without one): which key a workspace's tombstones need."""
        return None if self._tombstone is None else _fingerprint(b"tombstone\x00" + self._tombstone)

    def _tombstone_secret(self) -> bytes:
        if self._tombstone is None:
            raise KeyFileError("this master key has no tombstone secret; run `portrait keys rotate --key-file PATH` "
                               f"to add one to an older key file, or add 'tombstone:<64 hex digits>' to {ENV_VAR}")
        return self._tombstone

    @property
    def versions(self) -> tuple[int, ...]:
        """Version numbers held, oldest first."""
        return tuple(self._secrets)

    @property
    def newest_version(self) -> int:
        return max(self._secrets)

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the newest version: 16 hex digits of a hash that tells keys apart."""
        return _fingerprint(self._secrets[self.newest_version])

    def fingerprint_of(self, version: int) -> str:
        return _fingerprint(self.secret_bytes(version))

    def secret_bytes(self, version: int | None = None) -> bytes:
        """The secret of ``version`` (the newest when None). Never print or log it."""
        version = self.newest_version if version is None else version
        try:
            return self._secrets[version]
        except (KeyError, TypeError):
            held = ", ".join(map(str, self._secrets))
            raise KeyFileError(f"key version {version!r} is not held (held: {held}); "
                               "a destroyed version cannot be recovered") from None

    def __repr__(self) -> str:
        shown = ", ".join(f"v{v}:{_fingerprint(s)}" for v, s in self._secrets.items())
        if self._tombstone is not None:
            shown += f", tombstone:{self.tombstone_fingerprint}"
        return f"MasterKey({shown})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a MasterKey cannot be pickled")


def derive_key(master: MasterKey, domain: str, version: int | None = None) -> bytes:
    """32-byte key of ``domain`` at key ``version`` (newest when None), by HKDF-SHA256.

    ``info`` is ``domain`` and the version, so every (domain, version) pair gets an independent key.
    ``TOMBSTONE_DOMAIN`` without a version is keyed by the tombstone secret alone (no version can
    destroy it); with a version it gives the per-version key tombstones had before that secret.

    >>> key = MasterKey(bytes(32), tombstone_secret=bytes(range(32)))
    >>> derive_key(key, "person") == derive_key(key, "person", 1) != derive_key(key, "device")
    True
    >>> derive_key(key, TOMBSTONE_DOMAIN) != derive_key(key, TOMBSTONE_DOMAIN, 1)
    True
    """
    if not isinstance(master, MasterKey):
        raise TypeError(f"derive_key needs a MasterKey (from load_key_file), not {type(master).__name__}")
    if not isinstance(domain, str) or not domain or "\x00" in domain:
        raise ValueError("a key domain is a non-empty string without NUL characters, e.g. 'person'")
    if domain == TOMBSTONE_DOMAIN and version is None:
        info = b"portrait tombstone key\x00" + domain.encode("utf-8")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master._tombstone_secret())
    version = master.newest_version if version is None else version
    secret = master.secret_bytes(version)
    info = b"portrait pseudonym key\x00" + domain.encode("utf-8") + b"\x00v" + str(version).encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _format(key: MasterKey) -> str:
    lines = "".join(f"{_PREFIX} v{version} {key.secret_bytes(version).hex()}\n" for version in key.versions)
    return lines + f"{_TOMBSTONE_PREFIX} {key._tombstone_secret().hex()}\n"


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to a fresh 0600 file beside ``path`` and swap it in (never half-written)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_new(temporary, text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def create_key_file(path: str | os.PathLike) -> MasterKey:
    """Create a new key file (version 1 and the tombstone secret) readable by its owner only (mode 0600).

    Refuses to overwrite one.
    """
    path = Path(path)
    key = MasterKey(secrets.token_bytes(32), tombstone_secret=secrets.token_bytes(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_new(path, _format(key))
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite a key") from None
    return key


def load_key_file(path: str | os.PathLike) -> MasterKey:
    """Read a key file made by ``create_key_file``; refuse one that group or others can access."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} does not exist; create one with `portrait keys init --key-file {path}`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"key file {path} has mode {mode:o}, so others can read it; run `chmod 600 {path}`")
    lines = [line.strip() for line in path.read_text(encoding="ascii", errors="replace").splitlines() if line.strip()]
    versions: dict[int, bytes] = {}
    tombstone: bytes | None = None
    for number, line in enumerate(lines, start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            tombstone_match = _TOMBSTONE_LINE.fullmatch(line)
            if tombstone_match is None or tombstone is not None:
                raise KeyFileError(f"key file {path} is not a Portrait key file: line {number} is not "
                                   f"'{_PREFIX} v<N> <64 hex digits>' (or one '{_TOMBSTONE_PREFIX} <64 hex digits>')")
            tombstone = bytes.fromhex(tombstone_match.group(1))
            continue
        version = int(match.group(1))
        if version in versions:
            raise KeyFileError(f"key file {path} is not a Portrait key file: version {version} appears twice")
        versions[version] = bytes.fromhex(match.group(2))
    if not versions:
        raise KeyFileError(f"key file {path} is not a Portrait key file: it holds no key "
                           f"(expected '{_PREFIX} v1 <64 hex digits>')")
    return MasterKey(versions, tombstone_secret=tombstone)


def load_master_key(key_file: str | os.PathLike | None = None) -> MasterKey:
    """The key from ``key_file`` when given, else from ``PORTRAIT_MASTER_KEY``; a clear error when neither."""
    if key_file is not None:
        return load_key_file(key_file)
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        raise KeyFileError(f"no master key: no --key-file was given and {ENV_VAR} is not set; {_HOW_TO_CREATE}")
    versions: dict[int, bytes] = {}
    tombstone: bytes | None = None
    for position, entry in enumerate(text.split(","), start=1):
        match = _ENV_ENTRY.fullmatch(entry.strip())
        if match is None or (match.group(1) is None and "," in text):
            raise KeyFileError(f"{ENV_VAR} entry {position} is not 64 hex digits (or '<version>:<64 hex digits>' "
                               "and 'tombstone:<64 hex digits>' entries separated by commas)")
        if match.group(1) == "tombstone":
            if tombstone is not None:
                raise KeyFileError(f"{ENV_VAR} holds the tombstone secret twice")
            tombstone = bytes.fromhex(match.group(2))
            continue
        version = int(match.group(1) or 1)
        if version in versions:
            raise KeyFileError(f"{ENV_VAR} holds version {version} twice")
        versions[version] = bytes.fromhex(match.group(2))
    if not versions:
        raise KeyFileError(f"{ENV_VAR} holds no key version, only the tombstone secret; add '1:<64 hex digits>'")
    return MasterKey(versions, tombstone_secret=tombstone)


def _with_tombstone_secret(key: MasterKey) -> MasterKey:
    """``key``, given a fresh tombstone secret if it has none (a file made before tombstone secrets)."""
    if key.has_tombstone_secret:
        return key
    return MasterKey({v: key.secret_bytes(v) for v in key.versions}, tombstone_secret=secrets.token_bytes(32))


def add_tombstone_secret(path: str | os.PathLike) -> bool:
    """Give an older key file its tombstone secret; True if one was added, False if it had one already."""
    path = Path(path)
    key = load_key_file(path)
    if key.has_tombstone_secret:
        return False
    _replace(path, _format(_with_tombstone_secret(key)))
    return True


def rotate_key_file(path: str | os.PathLike) -> int:
    """Append a new random version to the key file and return its number; old versions stay.

    A file without a tombstone secret gains one.
    """
    path = Path(path)
    key = _with_tombstone_secret(load_key_file(path))
    version = key.newest_version + 1
    versions = {v: key.secret_bytes(v) for v in key.versions}
    versions[version] = secrets.token_bytes(32)
    _replace(path, _format(MasterKey(versions, tombstone_secret=key._tombstone_secret())))
    return version


def destroy_key_version(path: str | os.PathLike, version: int) -> None:
    """Remove ``version`` from the key file for good: its pseudonyms can no longer be recomputed.

    The newest version cannot be destroyed (``rotate`` first), so the file always holds a usable key.
    The tombstone secret is never removed (a file without one gains it), so tombstones made with it
    keep erased persons out whatever versions are destroyed.
    """
    path = Path(path)
    key = _with_tombstone_secret(load_key_file(path))
    if version not in key.versions:
        held = ", ".join(map(str, key.versions))
        raise KeyFileError(f"key file {path} holds no version {version} (it holds {held})")
    if version == key.newest_version:
        raise KeyFileError(f"version {version} is the newest in {path}; "
                           "run `portrait keys rotate` before destroying it")
    _replace(path, _format(MasterKey({v: key.secret_bytes(v) for v in key.versions if v != version},
                                     tombstone_secret=key._tombstone_secret())))
