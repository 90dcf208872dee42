"""Your own model by reference (PATH.py:FUNCTION, package.module:FUNCTION) or as a callable:
how it is imported, called, checked and recorded, and the error each mistake gets."""

from __future__ import annotations

import json
import os
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from numpy_cnn import Linear, Net, checkpoint, models
from numpy_cnn.config import Config
from numpy_cnn.model_ref import ModelError, canonical
from numpy_cnn.train import main

MNIST_LIKE = SimpleNamespace(sample_shape=(1, 28, 28), classes=10)

SOURCE = """
from numpy_cnn import Flatten, Linear, Net, ReLU


def mlp(rng, sample_shape, classes):
    n = 1
    for d in sample_shape:
        n *= d
    return Net([Flatten(), Linear(n, 32, rng=rng), ReLU(), Linear(32, classes, rng=rng)])


def rng_only(rng):
    return Net([Flatten(), Linear(784, 10, rng=rng)])


def any_keywords(rng, **options):
    return Net([Flatten(), Linear(784, options["classes"], rng=rng)])


def not_a_net(rng):
    return [Linear(784, 10, rng=rng)]


def raises(rng):
    return Net([Linear(784, 10, rng="not a generator")])


def too_few_scores(rng):
    return Net([Flatten(), Linear(784, 5, rng=rng)])


def flat_input(rng):
    return Net([Linear(784, 10, rng=rng)])


NOT_CALLABLE = 3
"""


def write(folder, name: str, text: str):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def mine(tmp_path):
    return write(tmp_path, "mine.py", SOURCE)


def test_a_file_reference_builds_the_same_net_for_the_same_seed(mine):
    ref = f"{mine}:mlp"
    a, b = models.build(ref, seed=4, data=MNIST_LIKE), models.build(ref, seed=4, data=MNIST_LIKE)
    c = models.build(ref, seed=5, data=MNIST_LIKE)
    assert [repr(layer) for layer in a.layers] == ["Flatten()", "Linear(784, 32)", "ReLU()", "Linear(32, 10)"]
    assert all(p.data.tobytes() == q.data.tobytes() for p, q in zip(a.parameters, b.parameters))
    assert any(p.data.tobytes() != q.data.tobytes() for p, q in zip(a.parameters, c.parameters))
    assert a.parameters[0].dtype == np.float32
    assert models.build(ref, dtype=np.float64, data=MNIST_LIKE).parameters[0].dtype == np.float64
    flat = models.build(ref, data=SimpleNamespace(sample_shape=(20,), classes=3))
    assert repr(flat.layers[1]) == "Linear(20, 32)" and repr(flat.layers[3]) == "Linear(32, 3)"
    assert models.input_shape(ref, MNIST_LIKE) == (1, 28, 28)
    assert models.input_shape("fc-net", MNIST_LIKE) == (784,)  # a built-in keeps its own


def test_the_keywords_are_passed_only_to_a_function_that_takes_them(mine):
    assert repr(models.build(f"{mine}:rng_only", data=MNIST_LIKE).layers[1]) == "Linear(784, 10)"
    assert repr(models.build(f"{mine}:any_keywords", data=MNIST_LIKE).layers[1]) == "Linear(784, 10)"


def test_a_module_reference_is_found_on_the_path_and_in_the_current_folder(tmp_path, monkeypatch):
    package = tmp_path / "zoo_unit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write(package, "nets.py", SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", os.getcwd())])
    net = models.build("zoo_unit.nets:mlp", seed=1, data=MNIST_LIKE)
    assert repr(net.layers[3]) == "Linear(32, 10)"
    assert Config("zoo_unit.nets:mlp").model == "zoo_unit.nets:mlp"  # recorded as written


def test_a_relative_path_is_recorded_absolute(mine, monkeypatch):
    monkeypatch.chdir(mine.parent)
    assert Config("mine.py:mlp").model == f"{mine}:mlp"
    assert canonical("conv-net") == "conv-net" and canonical("a.b:c") == "a.b:c"
    assert canonical("~/x.py:f") == os.path.expanduser("~/x.py:f")
    config = Config("mine.py:mlp")
    assert (config.n_epochs, config.n_shards, config.max_shift) == (10, 1, 0)  # your own model's defaults


def test_a_changed_file_is_imported_again(tmp_path):
    path = write(
        tmp_path,
        "grows.py",
        "from numpy_cnn import *\ndef net(rng):\n    return Net([Flatten(), Linear(784, 10, rng=rng)])\n",
    )
    assert len(models.build(f"{path}:net", data=MNIST_LIKE).layers) == 2
    path.write_text(
        "from numpy_cnn import *\ndef net(rng):\n"
        "    return Net([Flatten(), Linear(784, 20, rng=rng), ReLU(), Linear(20, 10, rng=rng)])\n"
    )
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    assert len(models.build(f"{path}:net", data=MNIST_LIKE).layers) == 4


@pytest.mark.parametrize(
    "function,words",
    [
        ("not_a_net", r"mine.py:not_a_net: the function returned list, not a numpy_cnn.Net"),
        ("raises", r"mine.py:raises: building the net failed: \w+Error: .* \(at .*mine.py, line 25\)"),
        ("too_few_scores", r"outputs of shape \(5,\) per sample; the data has 10 classes"),
        ("flat_input", r"net.layers\[0\], Linear\(784, 10\), cannot take an input of shape \(2, 1, 28, 28\)"),
        ("NOT_CALLABLE", r"mine.py:NOT_CALLABLE: NOT_CALLABLE is a int, not a function"),
        ("missing", r"mine.py:missing: .*mine.py has no 'missing'"),
    ],
)
def test_a_function_that_does_not_build_a_usable_net_is_named(mine, function, words):
    with pytest.raises(ModelError, match=words):
        models.build(f"{mine}:{function}", data=MNIST_LIKE)


def test_a_reference_that_does_not_import_is_named(tmp_path):
    bad = write(tmp_path, "bad.py", "def net(rng):\n    return (\n")
    failing = write(tmp_path, "failing.py", "import numpy_cnn_no_such_module\n")
    for name, words in [
        (f"{tmp_path}/absent.py:net", r"model .*absent.py:net: cannot read .*absent.py: No such file"),
        (f"{bad}:net", r"importing .*bad.py failed: SyntaxError: .* \(at .*bad.py, line 2\)"),
        (f"{failing}:net", r"importing .*failing.py failed: ModuleNotFoundError: .*numpy_cnn_no_such_module"),
        ("no_such_package.nets:net", r"importing no_such_package.nets failed: ModuleNotFoundError"),
        (
            f"{bad}",
            r"unknown model .*bad.py'; known models: conv-net, fc-net, or your own as PATH.py:FUNCTION",
        ),
        (f"{bad}:", r"expected PATH.py:FUNCTION or package.module:FUNCTION"),
        (":net", r"expected PATH.py:FUNCTION"),
    ]:
        with pytest.raises(ValueError, match=words):
            Config(name).check().check_model()


def test_your_own_model_needs_the_data_to_be_built(mine):
    with pytest.raises(ModelError, match="needs the data's sample shape and class count"):
        models.build(f"{mine}:mlp")


def test_a_callable_is_registered_under_its_name():
    def tiny(rng, classes):
        return Net([Linear(784, classes, rng=rng)])

    name = models.register(tiny)
    assert name == f"<callable {__name__}.test_a_callable_is_registered_under_its_name.<locals>.tiny>"
    assert Config(name).check().model == name
    net = models.build(name, data=SimpleNamespace(sample_shape=(784,), classes=7))
    assert repr(net.layers[0]) == "Linear(784, 7)"


def test_a_checkpoint_records_the_file_and_resumes_from_any_folder_only_with_it(
    mine, mnist_dir, tmp_path, monkeypatch, capsys
):
    other = write(tmp_path, "other.py", SOURCE)
    folder, elsewhere = tmp_path / "ck", tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = ["--data-dir", str(mnist_dir), "--checkpoint-dir", str(folder)]
    monkeypatch.chdir(tmp_path)
    assert main(["mine.py:mlp", "--max-steps", "3", *data]) == 0
    assert checkpoint.latest(folder).meta["config"]["model"] == f"{mine}:mlp"
    monkeypatch.chdir(elsewhere)  # the same file by another relative path: the same run
    assert main(["../mine.py:mlp", "--max-steps", "5", "--resume", str(folder), *data]) == 0
    assert checkpoint.latest(folder).meta["step"] == 5
    assert "resumed from" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([f"{other}:mlp", "--max-steps", "7", "--resume", str(folder), *data])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"the checkpoint is from a run with model='{mine}:mlp', this run has model='{other}:mlp'" in err


def test_your_own_saved_model_is_evaluated_and_trained_further_from_the_file(
    mine, mnist_dir, tmp_path, monkeypatch, capsys
):
    from numpy_cnn.api import fit
    from numpy_cnn.evaluate import main as evaluate

    monkeypatch.chdir(mine.parent)
    quiet = {"data_dir": str(mnist_dir), "progress": False, "log": lambda line: None}
    _, history = fit("mine.py:mlp", max_steps=20, save="w.npz", **quiet)
    monkeypatch.chdir(tmp_path.parent)  # the file names its model by absolute path
    capsys.readouterr()
    assert evaluate([str(mine.parent / "w.npz"), "--data-dir", str(mnist_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == history[-1]["test_acc"]
    _, more = fit(f"{mine}:mlp", max_steps=5, init_from=str(mine.parent / "w.npz"), **quiet)
    assert more[-1]["test_acc"] > 0.5
