"""Shared memory between the server and the workers on its machine: files in the job's private
folder, made private and full size, and mapped only after every check."""

from __future__ import annotations

import os

import numpy as np
import pytest

from numpy_cnn.distributed import memory
from numpy_cnn.shards import cover, tree_nodes


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "job"
    path.mkdir(mode=0o700)
    return path


def test_a_file_is_private_full_size_and_seen_by_whoever_maps_it(folder):
    made = memory.create(folder, "params-", 2 * 5 * 4)
    info = os.stat(made.path)
    assert made.path.parent == folder and made.path.name.startswith("params-")
    assert info.st_mode & 0o777 == 0o600 and info.st_size == 40
    assert info.st_blocks * 512 >= 40  # reserved now, not when a page is first written
    server = made.array(np.dtype(np.float32), (2, 5))
    reader = memory.open_file(made.path, folder, 40, writable=False).array(np.dtype(np.float32), (2, 5))
    writer = memory.open_file(made.path, folder, 40, writable=True).array(np.dtype(np.float32), (2, 5))
    server[1] = np.arange(5)
    assert reader[1].tolist() == [0, 1, 2, 3, 4] and not reader.flags.writeable
    writer[0, 2] = 7.5
    assert server[0, 2] == 7.5
    made.unlink()
    assert not made.path.exists() and reader[1, 4] == 4  # mapped: still there for those who have it
    made.unlink()  # twice is fine


def test_a_file_is_mapped_only_if_it_is_the_job_s_own(folder, tmp_path):
    made = memory.create(folder, "grads-0-", 64)
    with pytest.raises(ValueError, match="is not in the job's folder"):
        memory.open_file(made.path, tmp_path, 64, writable=True)
    with pytest.raises(ValueError, match="holds 64 bytes, expected 128"):
        memory.open_file(made.path, folder, 128, writable=True)
    os.chmod(made.path, 0o644)
    with pytest.raises(ValueError, match="shared file .* is not private to this user"):
        memory.open_file(made.path, folder, 64, writable=True)
    os.chmod(made.path, 0o600)
    os.chmod(folder, 0o755)
    with pytest.raises(ValueError, match="shared folder .* is not private to this user"):
        memory.open_file(made.path, folder, 64, writable=True)
    os.chmod(folder, 0o700)
    link = folder / "link"
    link.symlink_to(made.path)
    with pytest.raises(OSError):  # not followed: the file itself, or nothing
        memory.open_file(link, folder, 64, writable=True)
    with pytest.raises(FileNotFoundError):
        memory.open_file(folder / "gone", folder, 64, writable=True)


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/bin/mount"), reason="mounts a small tmpfs (root)"
)
def test_a_full_file_system_fails_when_the_file_is_made(tmp_path):
    import subprocess

    small = tmp_path / "small"
    small.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(OSError) as failed:
            memory.create(small, "grads-0-", 1 << 20)
        assert failed.value.errno == 28  # ENOSPC, with no file left behind
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_every_tree_node_has_a_slot_and_covers_use_them():
    for shards in (1, 2, 3, 4, 6, 8):
        nodes = tree_nodes(shards)
        assert len(nodes) == len(set(nodes)) == 2 * shards - 1 and nodes[0] == (0, shards)
        for lo in range(shards):
            for hi in range(lo + 1, shards + 1):
                assert set(cover(lo, hi, shards)) <= set(nodes)
