"""Your own data set: the three forms load the same arrays, every bad set gets an error naming the
file and the array, the .npy form is memory-mapped and a batch reads only its rows."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from own_sets import IDX_FILES, idx_bytes, make_set, write_idx, write_npy, write_npz

from numpy_cnn.config import Config
from numpy_cnn.data import arrays, global_batch, load
from numpy_cnn.data.arrays import DataError
from numpy_cnn.train import train

FORMS = {
    "npz": lambda tmp, a: write_npz(tmp / "set.npz", a),
    "npy": lambda tmp, a: write_npy(tmp / "npy", a),
    "idx": lambda tmp, a: write_idx(tmp / "idx", a),
    "idx.gz": lambda tmp, a: write_idx(tmp / "idx-gz", a, gz=True),
}


pytestmark = pytest.mark.usefixtures("own_cache")  # tests/conftest.py


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return make_set(n_train=200, n_test=50)


def test_every_form_loads_the_same_arrays(tmp_path, small):
    loaded = {form: load(str(write(tmp_path, small))) for form, write in FORMS.items()}
    for form, data in loaded.items():
        assert data.sample_shape == (1, 28, 28) and data.classes == 10, form
        assert data.digest == loaded["npz"].digest, form
        for split in ("train", "test"):
            got = getattr(data, split)
            np.testing.assert_array_equal(got.images, small[f"x_{split}"])
            np.testing.assert_array_equal(got.labels, small[f"y_{split}"])
            assert got.labels.dtype == np.int64 and not got.images.flags.writeable
    assert loaded["npz"].form == arrays.NPZ and loaded["idx"].form == arrays.IDX
    assert type(loaded["npy"].train.images) is np.memmap  # the .npy form stays on disk


def test_every_form_trains_to_the_same_bits(tmp_path, small):
    weights = {}
    for form, write in FORMS.items():
        config = Config(model="fc-net", dataset=str(write(tmp_path, small)), max_steps=4, shards=2)
        config.check_data()
        net, _ = train(config, progress=False, log=lambda line: None)
        weights[form] = [p.data.tobytes() for p in net.parameters]
    assert all(w == weights["npz"] for w in weights.values())


@pytest.mark.parametrize(
    "shape,sample_shape", [((28, 28), (1, 28, 28)), ((3, 8, 6), (3, 8, 6)), ((784,), (784,))]
)
def test_sample_shape_has_a_channel_axis_for_images(tmp_path, shape, sample_shape):
    data = load(str(write_npz(tmp_path / "s.npz", make_set(20, 10, 4, shape))))
    assert data.sample_shape == sample_shape and data.classes == 4
    assert data.images == (len(sample_shape) == 3)


def test_float32_samples_and_narrow_labels_load(tmp_path, small):
    given = {
        **small,
        "x_train": small["x_train"] / np.float32(255),
        "y_test": small["y_test"].astype(np.uint8),
    }
    data = load(str(write_npy(tmp_path / "f", given)))
    assert data.train.images.dtype == np.float32 and data.test.labels.dtype == np.int64
    # float32 samples go to the net as they are; uint8 ones are divided by 255
    x, _ = global_batch(len(data.train), 8, 0, 0, 0).samples(data.train.images, data.train.labels, (784,))
    np.testing.assert_array_equal(x, given["x_train"][global_batch(200, 8, 0, 0, 0).indices].reshape(8, 784))


def _drop(name):
    return lambda a: {k: v for k, v in a.items() if k != name}


def _with(name, value):
    return lambda a: {**a, name: value(a[name])}


def _nan_at(i, value=np.nan):
    def put(x):
        x = x.astype(np.float32)
        x[i, 3, 4] = value
        return x

    return put


def _label_at(i, value):
    def put(y):
        y = y.copy()
        y[i] = value
        return y

    return put


# (what is wrong, the array named, the forms it can happen in, a change to the good set, the error)
BAD = [
    ("missing", "y_test", ("npz",), _drop("y_test"), "no array y_test in it"),
    ("missing", "y_test", ("npy",), _drop("y_test"), "y_test.npy is not in it"),
    ("missing", "x_train", ("idx",), _drop("x_train"), "train-images-idx3-ubyte (raw or .gz) is not in it"),
    ("counts", "x_train", ("npz", "npy"), _with("y_train", lambda y: y[:-1]), "200 samples but y_train"),
    ("counts", "x_test", ("idx",), _with("x_test", lambda x: x[:-2]), "48 samples but y_test"),
    ("dtype", "x_train", ("npz", "npy"), _with("x_train", lambda x: x.astype(np.float64)), "dtype float64"),
    ("dtype", "x_test", ("npz", "npy"), _with("x_test", lambda x: x.astype(np.int16)), "dtype int16"),
    (
        "dtype",
        "y_train",
        ("npz", "npy"),
        _with("y_train", lambda y: y.astype(np.float32)),
        "must be integers",
    ),
    ("dtype", "y_test", ("npz", "npy"), _with("y_test", lambda y: y.astype(bool)), "dtype bool"),
    ("range", "y_train", ("npz", "npy"), _with("y_train", _label_at(7, -1)), "label -1 at sample 7"),
    ("NaN", "x_test", ("npz", "npy"), _with("x_test", _nan_at(5)), "NaN or Inf in sample 5"),
    ("Inf", "x_train", ("npz", "npy"), _with("x_train", _nan_at(199, -np.inf)), "NaN or Inf in sample 199"),
    (
        "shapes",
        "x_test",
        ("npz", "npy", "idx"),
        _with("x_test", lambda x: x[:, :27]),
        "train and test samples",
    ),
    ("shapes", "x_train", ("npz",), _with("x_train", lambda x: x[:, 0, 0]), "has shape (200,)"),
    ("shapes", "y_train", ("npy",), _with("y_train", lambda y: y[:, None]), "one integer per sample"),
    (
        "empty",
        "x_test",
        ("npz", "npy", "idx"),
        lambda a: {**a, "x_test": a["x_test"][:0], "y_test": a["y_test"][:0]},
        "the test set has no samples",
    ),  # fmt: skip
]


@pytest.mark.parametrize(
    "problem,name,form,change,message",
    [(p, n, f, c, m) for p, n, forms, c, m in BAD for f in forms],
    ids=[f"{p}-{n}-{f}" for p, n, forms, _, _ in BAD for f in forms],
)
def test_a_bad_data_set_is_refused_naming_the_file_and_the_array(
    tmp_path, small, problem, name, form, change, message
):
    bad = change(small)
    if form == "idx":
        path = tmp_path / "idx"
        path.mkdir()
        for k, v in bad.items():
            (path / IDX_FILES[k]).write_bytes(idx_bytes(v))
        file = path / IDX_FILES[name]
    else:
        path = FORMS[form](tmp_path, bad)
        file = path if form == "npz" else path / f"{name}.npy"
    with pytest.raises(DataError) as e:
        load(str(path))
    assert message in str(e.value)
    assert str(path if problem == "missing" else file) in str(e.value)
    assert name in str(e.value) or IDX_FILES[name] in str(e.value)


def _garbage(tmp_path: Path, small) -> tuple[Path, str]:
    (tmp_path / "set.npz").write_bytes(b"not a zip file")
    return tmp_path / "set.npz", "cannot read it as a .npz file"


def _one_array(tmp_path: Path, small) -> tuple[Path, str]:
    np.save(tmp_path / "x.npy", small["x_train"])
    return tmp_path / "x.npy", "one array, not a .npz file"


def _pickled(tmp_path: Path, small) -> tuple[Path, str]:
    folder = write_npy(tmp_path / "npy", small)
    np.save(folder / "y_test.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    return folder, f"{folder / 'y_test.npy'}: cannot read y_test from it as a .npy file"


def _truncated_npy(tmp_path: Path, small) -> tuple[Path, str]:
    folder = write_npy(tmp_path / "npy", small)
    data = (folder / "x_test.npy").read_bytes()
    (folder / "x_test.npy").write_bytes(data[:-100])
    return folder, f"{folder / 'x_test.npy'}: cannot read x_test"


def _truncated_idx(tmp_path: Path, small) -> tuple[Path, str]:
    folder = write_idx(tmp_path / "idx", small)
    file = folder / IDX_FILES["y_train"]
    file.write_bytes(file.read_bytes()[:-3])
    return folder, f"{file}: truncated"


def _nothing(tmp_path: Path, small) -> tuple[Path, str]:
    return tmp_path / "nope.npz", "nope.npz: no such file or folder"


def _empty_folder(tmp_path: Path, small) -> tuple[Path, str]:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "a folder without a data set: it needs either x_train.npy"


@pytest.mark.parametrize(
    "make", [_garbage, _one_array, _pickled, _truncated_npy, _truncated_idx, _nothing, _empty_folder]
)
def test_an_unreadable_data_set_is_refused_naming_the_file(tmp_path, small, make):
    path, message = make(tmp_path, small)
    with pytest.raises(DataError, match="^" + str(tmp_path)) as e:
        load(str(path))
    assert message in str(e.value)


def test_a_relative_path_loads_as_the_absolute_one(tmp_path, small, monkeypatch):
    write_npz(tmp_path / "set.npz", small)
    monkeypatch.chdir(tmp_path)
    assert load("set.npz").path == str(tmp_path / "set.npz")


def test_a_batch_reads_only_its_rows_of_a_memory_mapped_set(tmp_path):
    n = 20_000
    big = make_set(n_train=n, n_test=100)
    folder = write_npy(tmp_path / "big", big)
    tracemalloc.start()
    try:
        data = load(str(folder))
        before, loading = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        x, _ = global_batch(n, 64, 0, 0, 0, max_shift=2).samples(data.train.images, data.train.labels, (784,))
        batch = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    images = big["x_train"].nbytes  # 15.7 MB
    assert type(data.train.images) is np.memmap
    assert loading < images / 10  # the labels as int64 and a chunk of them, not the images
    assert batch < images / 10  # the epoch's order and shifts, and 64 samples
    # the rows asked for, shifted as in memory
    in_memory = global_batch(n, 64, 0, 0, 0, max_shift=2).samples(big["x_train"], big["y_train"], (784,))
    np.testing.assert_array_equal(x, in_memory[0])


def test_training_on_a_memory_mapped_set_never_copies_it(tmp_path):
    flat = make_set(n_train=20_000, n_test=100, shape=(784,))
    flat = {**flat, "x_train": flat["x_train"] / np.float32(255), "x_test": flat["x_test"] / np.float32(255)}
    folder = write_npy(tmp_path / "flat", flat)
    config = Config(model="fc-net", dataset=str(folder), max_steps=3, shards=2)
    tracemalloc.start()
    try:
        config.check_data()
        train(config, progress=False, log=lambda line: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # fc-net with Adam is about 5 MB; the float32 training set is 62.7 MB
    assert peak < flat["x_train"].nbytes / 4


def test_the_scan_is_remembered_across_processes_until_a_file_changes(tmp_path, small, monkeypatch):
    monkeypatch.setattr(arrays, "RACY_NS", 0)  # the files were just written: mark them anyway
    folder = write_npy(tmp_path / "npy", small)
    scans, real = [], arrays.scan
    monkeypatch.setattr(arrays, "scan", lambda a, f: scans.append(1) or real(a, f))
    first = load(str(folder))
    arrays._load.cache_clear()  # as a new process would start
    second = load(str(folder))
    assert len(scans) == 1 and second.digest == first.digest and second.classes == 10
    y = small["y_train"].copy()
    y[3] = -4
    np.save(folder / "y_train.npy", y)  # the same size, in place
    arrays._load.cache_clear()
    with pytest.raises(DataError, match="label -4 at sample 3"):
        load(str(folder))
    assert len(scans) == 2


def test_the_scan_streams_in_chunks(tmp_path, small, monkeypatch):
    folder = write_npy(tmp_path / "npy", small)
    whole = load(str(folder)).digest
    arrays._load.cache_clear()
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 7 * 784)  # 7 images at a time
    assert load(str(folder)).digest == whole
    x = small["x_test"].astype(np.float32)
    x[44, 0, 0] = np.nan
    np.save(folder / "x_test.npy", x)
    arrays._load.cache_clear()
    with pytest.raises(DataError, match="NaN or Inf in sample 44"):
        load(str(folder))


def test_another_value_is_another_digest(tmp_path, small):
    y = small["y_test"].copy()
    y[0] = (y[0] + 1) % 10
    a = load(str(write_npz(tmp_path / "a.npz", small)))
    b = load(str(write_npz(tmp_path / "b.npz", {**small, "y_test": y})))
    assert a.digest != b.digest
