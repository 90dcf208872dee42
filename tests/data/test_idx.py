"""The IDX reader accepts the real files and rejects every kind of bad one by name."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from numpy_cnn.data import IDXError, read_idx


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
