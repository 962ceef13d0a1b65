"""The master key file."""

from __future__ import annotations

import os
import pickle
import stat

import pytest

from profiling.errors import KeyFileError
from profiling.keys import create_key_file, load_key_file


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
