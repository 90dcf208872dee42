"""Atomic writes: the reader sees a whole file, with the mode an ordinary open() would give it."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from numpy_cnn import files


@pytest.fixture
def umask():
    """set(mask) -> sets the process umask for this test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize(
    "mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_saved_file_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "w.npz"
    files.atomic_savez(path, {"a": np.arange(3)})
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    with np.load(path) as f:
        np.testing.assert_array_equal(f["a"], np.arange(3))
    assert os.listdir(tmp_path) == ["w.npz"]  # no temporary file left beside it


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["022", "077"])
def test_umask_is_read_without_changing_it(umask, mask):
    umask(mask)
    assert files.current_umask() == mask
    assert os.umask(mask) == mask  # still in force afterwards


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["022", "077"])
def test_umask_without_proc(umask, mask, monkeypatch, tmp_path):
    monkeypatch.setattr(files, "PROC_STATUS", str(tmp_path / "no-proc"))
    umask(mask)
    assert files.current_umask() == mask
    assert os.umask(mask) == mask


def test_bytes_replace_the_old_file_whole(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "m.json"
    path.write_text("old")
    files.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["m.json"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def half(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.atomic_write(tmp_path / "x", half)
    assert os.listdir(tmp_path) == []
