"""The IDX reader accepts the real files and rejects every kind of bad one by name."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from numpy_cnn.data import IDXError, idx, read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture
def sample():
    return np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_raw_and_gzip(tmp_path, sample, compress):
    data = idx_bytes(sample)
    path = tmp_path / ("x.gz" if compress else "x")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path, sha256=hashlib.sha256(data).hexdigest(), shape=(None, 4, 3))
    np.testing.assert_array_equal(out, sample)


def test_bad_magic_number(tmp_path, sample):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x01\x02" + idx_bytes(sample)[2:])
    with pytest.raises(IDXError, match=r"bad-magic: bad magic number"):
        read_idx(path)


def test_unknown_type_code(tmp_path, sample):
    path = tmp_path / "bad-type"
    path.write_bytes(b"\x00\x00\x07" + idx_bytes(sample)[3:])
    with pytest.raises(IDXError, match="bad-type: unknown IDX type"):
        read_idx(path)


def test_truncated_payload(tmp_path, sample):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(sample)[:-7])
    with pytest.raises(IDXError, match=r"short: truncated: header \(5, 4, 3\) needs 76 bytes, file has 69"):
        read_idx(path)


def test_trailing_bytes(tmp_path, sample):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(sample) + b"\x00")
    with pytest.raises(IDXError, match="long: 1 unexpected trailing bytes"):
        read_idx(path)


def test_truncated_gzip(tmp_path, sample):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(sample))[:-10])
    with pytest.raises(IDXError, match="cut.gz: corrupted or truncated gzip"):
        read_idx(path)


def test_corrupted_gzip_crc(tmp_path, sample):
    blob = bytearray(gzip.compress(idx_bytes(sample)))
    blob[-6] ^= 0xFF  # inside the CRC-32 trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(IDXError, match="crc.gz: corrupted"):
        read_idx(path)


def test_wrong_checksum_with_a_valid_structure(tmp_path, sample):
    tampered = sample.copy()
    tampered[0, 0, 0] ^= 1
    path = tmp_path / "tampered"
    path.write_bytes(idx_bytes(tampered))
    with pytest.raises(IDXError, match="tampered: SHA-256 of the decompressed data is"):
        read_idx(path, sha256=hashlib.sha256(idx_bytes(sample)).hexdigest())


def test_wrong_shape(tmp_path, sample):
    path = tmp_path / "shape"
    path.write_bytes(idx_bytes(sample))
    with pytest.raises(IDXError, match="shape"):
        read_idx(path, shape=(None, 28, 28))


def test_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(IDXError, match="empty: bad magic"):
        read_idx(path)


def age(path: Path, seconds: int = 600) -> None:
    """Date the file's mtime back (its ctime stays now)."""
    t = time.time_ns() - seconds * 10**9
    os.utime(path, ns=(t, t))


@pytest.fixture
def old_file(tmp_path, sample, monkeypatch) -> tuple[Path, str]:
    """An IDX file last modified ten minutes ago, and its SHA-256; files changed just now may be
    marked too (its ctime is now), so tests need not wait out RACY_NS."""
    monkeypatch.setattr(idx, "RACY_NS", 0, raising=False)
    path = tmp_path / "data" / "x"
    path.parent.mkdir()
    path.write_bytes(idx_bytes(sample))
    age(path)
    return path, hashlib.sha256(idx_bytes(sample)).hexdigest()


def test_a_verified_file_is_not_hashed_again(tmp_path, old_file, sample, hashed):
    path, digest = old_file
    marks = tmp_path / "marks"
    for _ in range(3):
        out = read_idx(path, sha256=digest, shape=(None, 4, 3), marks=marks)
        np.testing.assert_array_equal(out, sample)
    assert len(hashed) == 1
    (marker,) = marks.iterdir()  # one marker, written atomically: no temporary file left
    assert marker.suffix == ".json" and json.loads(marker.read_text())["path"] == str(path)
    assert os.listdir(path.parent) == ["x"]  # nothing written beside the data


def test_a_marked_file_still_has_its_shape_checked(tmp_path, old_file):
    path, digest = old_file
    read_idx(path, sha256=digest, marks=tmp_path / "marks")
    with pytest.raises(IDXError, match="shape"):
        read_idx(path, sha256=digest, shape=(None, 28, 28), marks=tmp_path / "marks")


def test_a_marker_holds_only_for_the_digest_it_was_checked_against(tmp_path, old_file):
    path, digest = old_file
    read_idx(path, sha256=digest, marks=tmp_path / "marks")
    with pytest.raises(IDXError, match="SHA-256"):
        read_idx(path, sha256="0" * 64, marks=tmp_path / "marks")


@pytest.mark.parametrize("mtime", ["touched", "set back"])
def test_a_file_changed_after_it_was_marked_is_hashed_and_caught(tmp_path, old_file, sample, hashed, mtime):
    path, digest = old_file
    read_idx(path, sha256=digest, marks=tmp_path / "marks")
    before = os.stat(path)
    tampered = sample.copy()
    tampered[0, 0, 0] ^= 1
    path.write_bytes(idx_bytes(tampered))  # same size, one bit different
    if mtime == "touched":
        age(path, 300)
    else:  # the old mtime put back, as `touch -r` or a copy keeping times would: ctime shows the edit
        time.sleep(0.05)  # past the kernel's timestamp tick, or the edit would not show in ctime
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    with pytest.raises(IDXError, match="SHA-256"):
        read_idx(path, sha256=digest, marks=tmp_path / "marks")
    assert len(hashed) == 2


def test_an_unwritable_marker_folder_only_costs_hashing(tmp_path, old_file, sample, hashed):
    path, digest = old_file
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # makedirs fails even for root, unlike a chmod
    for _ in range(2):
        np.testing.assert_array_equal(read_idx(path, sha256=digest, marks=blocked / "marks"), sample)
    assert len(hashed) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_a_read_only_marker_folder_only_costs_hashing(tmp_path, old_file, hashed):
    path, digest = old_file
    marks = tmp_path / "marks"
    marks.mkdir(mode=0o555)
    for _ in range(2):
        read_idx(path, sha256=digest, marks=marks)
    assert len(hashed) == 2 and os.listdir(marks) == []


def test_a_damaged_marker_only_costs_hashing(tmp_path, old_file, hashed):
    path, digest = old_file
    marks = tmp_path / "marks"
    read_idx(path, sha256=digest, marks=marks)
    (marker,) = marks.iterdir()
    marker.write_text('{"path": ')
    read_idx(path, sha256=digest, marks=marks)
    read_idx(path, sha256=digest, marks=marks)  # the second read rewrote it whole
    assert len(hashed) == 2


@pytest.mark.parametrize("change", ["written", "mtime set back"])
def test_a_file_changed_just_now_is_not_marked_yet(tmp_path, sample, hashed, change):
    path = tmp_path / "fresh"
    path.write_bytes(idx_bytes(sample))
    if change == "mtime set back":
        age(path)  # the ctime still says now
    digest = hashlib.sha256(idx_bytes(sample)).hexdigest()
    hashed.clear()
    for _ in range(2):
        read_idx(path, sha256=digest, marks=tmp_path / "marks")
    assert len(hashed) == 2 and not (tmp_path / "marks").exists()
