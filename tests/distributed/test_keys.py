"""CURVE key files: written private, read per role, errors that name the folder, no secret in repr."""

from __future__ import annotations

import stat

import pytest

from numpy_cnn.distributed import keys


def test_write_then_read_each_role(tmp_path):
    folder = keys.write(tmp_path / "job")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in keys.FILES:
        mode = stat.S_IMODE((folder / name).stat().st_mode)
        assert mode & 0o077 == 0 if name.endswith("_secret") else True, (name, oct(mode))
    server, worker = keys.read(folder, keys.SERVER), keys.read(folder, keys.WORKER)
    assert server.peer_public == worker.public and worker.peer_public == server.public
    assert server.secret != worker.secret and len(server.secret) == 40  # Z85 of 32 bytes
    assert server.secret.decode() not in repr(server)


def test_never_overwrites_and_names_what_is_missing(tmp_path):
    folder = keys.write(tmp_path / "job")
    with pytest.raises(FileExistsError, match="already holds"):
        keys.write(folder)
    (folder / "worker.key_secret").unlink()
    keys.read(folder, keys.SERVER)  # the server needs only its secret and the worker's public key
    with pytest.raises(keys.KeyFileError, match=f"worker's keys from {folder}"):
        keys.read(folder, keys.WORKER)
