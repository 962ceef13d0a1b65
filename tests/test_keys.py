"""The master key: files, versions, HKDF derivation, the environment variable and the CLI."""

from __future__ import annotations

import os
import pickle
import re
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.cli import main
from profiling.errors import KeyFileError
from profiling.pseudonyms import TOMBSTONE
from profiling.keys import (
    ENV_VAR,
    TOMBSTONE_DOMAIN,
    MasterKey,
    add_tombstone_secret,
    create_key_file,
    derive_key,
    destroy_key_version,
    load_key_file,
    load_master_key,
    rotate_key_file,
)


def test_created_private_and_loaded_back(tmp_path):
    path = tmp_path / "keys" / "master.key"
    key = create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key_file(path)
    assert loaded.fingerprint == key.fingerprint and loaded.secret_bytes() == key.secret_bytes()


def test_key_never_shown(tmp_path):
    key = create_key_file(tmp_path / "k")
    secret = key.secret_bytes().hex()
    assert secret not in repr(key) and secret not in str(key) and secret not in f"{key}"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


def test_refuses_to_overwrite(tmp_path):
    create_key_file(tmp_path / "k")
    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite"):
        create_key_file(tmp_path / "k")


def test_refuses_readable_by_others(tmp_path):
    path = tmp_path / "k"
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"mode 644, so others can read it; run `chmod 600"):
        load_key_file(path)


def test_missing_key_says_how_to_create_one(tmp_path):
    with pytest.raises(KeyFileError, match=r"does not exist; create one with `portrait keys init --key-file"):
        load_key_file(tmp_path / "absent.key")


@pytest.mark.parametrize("content", ["", "hello", "portrait-master-key v1 1234", "portrait-master-key v1 " + "zz" * 32])
def test_malformed_key_file(tmp_path, content):
    path = tmp_path / "k"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="is not a Portrait key file") as caught:
        load_key_file(path)
    assert not any(len(token) >= 20 and token in str(caught.value) for token in content.split())


# --- versions, derivation, the environment, the command line -------------------------------------


def _secrets_of(key: MasterKey) -> list[str]:
    return [key.secret_bytes(v).hex() for v in key.versions]


def _assert_no_secret(text: str, key: MasterKey) -> None:
    for secret in _secrets_of(key):
        assert secret not in text.lower()
        assert secret[:16] not in text.lower()


def test_a_one_line_key_file_is_version_1(tmp_path):
    path = tmp_path / "k"
    path.write_text("portrait-master-key v1 " + "ab" * 32 + "\n")
    os.chmod(path, 0o600)
    key = load_key_file(path)
    assert key.versions == (1,) and key.newest_version == 1 and key.secret_bytes() == bytes.fromhex("ab" * 32)


def test_derive_key_is_hkdf_per_domain_and_version():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = MasterKey({1: bytes(32), 2: bytes(range(32))})
    assert derive_key(key, "person") == derive_key(key, "person", 2)
    assert len({derive_key(key, d, v) for d in ("person", "device") for v in (1, 2)}) == 4
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"portrait pseudonym key\x00person\x00v1").derive(bytes(32))
    assert derive_key(key, "person", 1) == expected
    with pytest.raises(KeyFileError, match=r"key version 3 is not held \(held: 1, 2\)"):
        derive_key(key, "person", 3)
    with pytest.raises(ValueError, match="non-empty string"):
        derive_key(key, "")
    with pytest.raises(TypeError, match="needs a MasterKey"):
        derive_key(bytes(32), "person")


def test_rotate_then_destroy(tmp_path):
    path = tmp_path / "k"
    first = create_key_file(path)
    assert rotate_key_file(path) == 2 and rotate_key_file(path) == 3
    key = load_key_file(path)
    assert key.versions == (1, 2, 3) and key.secret_bytes(1) == first.secret_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="is the newest .* run `portrait keys rotate` before destroying it"):
        destroy_key_version(path, 3)
    with pytest.raises(KeyFileError, match=r"holds no version 7 \(it holds 1, 2, 3\)"):
        destroy_key_version(path, 7)
    assert load_key_file(path).versions == (1, 2, 3)  # refusals changed nothing
    destroy_key_version(path, 1)
    after = load_key_file(path)
    assert after.versions == (2, 3) and after.secret_bytes(2) == key.secret_bytes(2)
    with pytest.raises(KeyFileError, match="a destroyed version cannot be recovered"):
        derive_key(after, "person", 1)
    assert not list(tmp_path.glob(".*tmp"))


def test_rotate_refuses_a_readable_file(tmp_path):
    path = tmp_path / "k"
    create_key_file(path)
    os.chmod(path, 0o640)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="so others can read it"):
        rotate_key_file(path)
    assert path.read_bytes() == before


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cd" * 32)
    key = load_master_key()
    assert key.versions == (1,) and key.secret_bytes() == bytes.fromhex("cd" * 32)
    monkeypatch.setenv(ENV_VAR, f"1:{'00' * 32}, 2:{'11' * 32}")
    assert load_master_key().versions == (1, 2)
    monkeypatch.setenv(ENV_VAR, "not-a-key-" + "ef" * 30)
    with pytest.raises(KeyFileError, match=f"{ENV_VAR} entry 1 is not 64 hex digits") as caught:
        load_master_key()
    assert "ef" * 30 not in str(caught.value)


def test_no_key_at_all_says_how_to_create_one(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(KeyFileError,
                       match=r"no master key: .*`portrait keys init --key-file PATH`.*PORTRAIT_MASTER_KEY"):
        load_master_key()


def test_versions_never_shown():
    key = MasterKey({1: bytes(range(32)), 2: bytes(range(32, 64))})
    _assert_no_secret(repr(key) + str(key) + f"{key!r}", key)
    assert re.fullmatch(r"MasterKey\(v1:[0-9a-f]{16}, v2:[0-9a-f]{16}\)", repr(key))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(KeyFileError) as caught:
        key.secret_bytes(9)
    _assert_no_secret(str(caught.value), key)


def test_cli_rotate_show_destroy(tmp_path, capsys):
    path = tmp_path / "keys" / "master.key"
    assert main(["--quiet", "keys", "init", "--key-file", str(path)]) == 0
    assert main(["--quiet", "keys", "rotate", "--key-file", str(path)]) == 0
    assert main(["--quiet", "keys", "show-versions", "--key-file", str(path)]) == 0
    key = load_key_file(path)
    out = capsys.readouterr().out
    assert f"v1  fingerprint {key.fingerprint_of(1)}" in out
    assert f"v2  fingerprint {key.fingerprint_of(2)}  (newest)" in out
    assert main(["--quiet", "keys", "destroy", "--key-file", str(path), "--version", "2"]) == 2
    captured = capsys.readouterr()
    assert "is the newest" in captured.err
    assert main(["--quiet", "keys", "destroy", "--key-file", str(path), "--version", "1"]) == 0
    captured2 = capsys.readouterr()
    assert "destroyed key version 1" in captured2.out
    assert main(["--quiet", "keys", "show-versions", "--key-file", str(path)]) == 0
    captured3 = capsys.readouterr()
    assert "v1 " not in captured3.out and "v2 " in captured3.out
    for text in (out, captured.out, captured.err, captured2.out, captured2.err, captured3.out):
        _assert_no_secret(text, key)


def test_cli_show_versions_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, "12" * 32)
    assert main(["--quiet", "keys", "show-versions"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("v1  fingerprint ") and "12" * 32 not in out
    monkeypatch.delenv(ENV_VAR)
    assert main(["--quiet", "keys", "show-versions"]) == 2
    assert "portrait keys init" in capsys.readouterr().err


# --- the tombstone secret: outlives every version -------------------------------------------------


def test_tombstone_secret_is_created_kept_and_added_to_older_files(tmp_path):
    path = tmp_path / "k"
    key = create_key_file(path)
    assert key.has_tombstone_secret and path.read_text().count("portrait-tombstone-key ") == 1
    rotate_key_file(path)
    destroy_key_version(path, 1)
    after = load_key_file(path)
    assert after.versions == (2,) and after.tombstone_fingerprint == key.tombstone_fingerprint
    assert derive_key(after, TOMBSTONE_DOMAIN) == derive_key(key, TOMBSTONE_DOMAIN)
    # A file made before tombstone secrets gains one, once, and keeps its versions.
    old = tmp_path / "old"
    old.write_text("portrait-master-key v1 " + "ab" * 32 + "\n")
    os.chmod(old, 0o600)
    assert not load_key_file(old).has_tombstone_secret
    assert add_tombstone_secret(old) is True and add_tombstone_secret(old) is False
    gained = load_key_file(old)
    assert gained.has_tombstone_secret and gained.secret_bytes(1) == bytes.fromhex("ab" * 32)
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    _assert_no_secret(repr(gained), gained)
    assert gained._tombstone_secret().hex() not in repr(gained)


def test_tombstone_key_needs_the_secret_and_ignores_versions():
    bare = MasterKey({1: bytes(32), 2: bytes(range(32))})
    with pytest.raises(KeyFileError, match=r"no tombstone secret; run `portrait keys rotate"):
        derive_key(bare, TOMBSTONE_DOMAIN)
    one = MasterKey({1: bytes(32)}, tombstone_secret=bytes(range(1, 33)))
    other = MasterKey({7: bytes(range(32))}, tombstone_secret=bytes(range(1, 33)))
    assert derive_key(one, TOMBSTONE_DOMAIN) == derive_key(other, TOMBSTONE_DOMAIN)
    assert derive_key(one, TOMBSTONE_DOMAIN, 1) != derive_key(one, TOMBSTONE_DOMAIN)  # the pre-secret key
    assert TOMBSTONE == TOMBSTONE_DOMAIN  # pseudonymize(..., TOMBSTONE) is keyed by the tombstone secret
    with pytest.raises(KeyFileError, match="exactly 32 bytes"):
        MasterKey({1: bytes(32)}, tombstone_secret=b"short")


@pytest.mark.parametrize("content", [
    "portrait-tombstone-key " + "ab" * 32 + "\n",
    "portrait-master-key v1 " + "ab" * 32 + "\nportrait-tombstone-key " + "cd" * 32
    + "\nportrait-tombstone-key " + "ef" * 32 + "\n",
])
def test_malformed_tombstone_lines(tmp_path, content):
    path = tmp_path / "k"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="is not a Portrait key file"):
        load_key_file(path)


def test_tombstone_secret_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f"1:{'00' * 32},tombstone:{'11' * 32}")
    key = load_master_key()
    assert key.versions == (1,) and key.has_tombstone_secret
    monkeypatch.setenv(ENV_VAR, f"tombstone:{'11' * 32}")
    with pytest.raises(KeyFileError, match="only the tombstone secret"):
        load_master_key()


def test_cli_shows_the_tombstone_fingerprint_and_rotate_adds_it(tmp_path, capsys):
    path = tmp_path / "k"
    path.write_text("portrait-master-key v1 " + "ab" * 32 + "\n")
    os.chmod(path, 0o600)
    assert main(["--quiet", "keys", "show-versions", "--key-file", str(path)]) == 0
    assert "tombstone  none: `portrait keys rotate` adds one" in capsys.readouterr().out
    assert main(["--quiet", "keys", "rotate", "--key-file", str(path)]) == 0
    assert "added a tombstone secret" in capsys.readouterr().out
    key = load_key_file(path)
    assert main(["--quiet", "keys", "show-versions", "--key-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"tombstone  fingerprint {key.tombstone_fingerprint}  (never destroyed)" in out
    _assert_no_secret(out, key)
    assert key._tombstone_secret().hex() not in out


@settings(max_examples=40, deadline=None)
@given(versions=st.dictionaries(st.integers(1, 999_999), st.binary(min_size=32, max_size=32), min_size=1, max_size=4),
       tombstone=st.one_of(st.none(), st.binary(min_size=32, max_size=32)), position=st.integers(0, 4),
       separator=st.sampled_from(["\n", "\n\n", "\r\n", "\n  "]))
def test_key_file_lines_in_any_order_load_and_survive_a_rotation(tmp_path_factory, versions, tombstone, position,
                                                                   separator):
    lines = [f"portrait-master-key v{v} {s.hex()}" for v, s in versions.items()]
    if tombstone is not None:
        lines.insert(min(position, len(lines)), f"portrait-tombstone-key {tombstone.hex()}")
    path = tmp_path_factory.mktemp("keys") / "k"
    path.write_text(separator.join(lines) + separator)
    os.chmod(path, 0o600)
    key = load_key_file(path)
    assert key.versions == tuple(sorted(versions))
    assert all(key.secret_bytes(v) == s for v, s in versions.items())
    expected = MasterKey(versions, tombstone_secret=tombstone)
    assert key.tombstone_fingerprint == expected.tombstone_fingerprint
    if max(versions) < 999_999:
        rotate_key_file(path)
        rotated = load_key_file(path)
        assert rotated.versions == (*sorted(versions), max(versions) + 1) and rotated.has_tombstone_secret
        if tombstone is not None:
            assert rotated.tombstone_fingerprint == expected.tombstone_fingerprint
