"""numpy_cnn.launch.api.fit, a data-parallel job from Python: the `launch` command's weights for
the same flags, with worker processes and in one process, and the errors it raises."""

from __future__ import annotations

import pytest
from test_launch import LAUNCH, load_npz, run

from numpy_cnn import Flatten, Linear, Net, ReLU
from numpy_cnn.launch.api import fit

SOURCE = """
from numpy_cnn import Flatten, Linear, Net, ReLU


def mlp(rng, sample_shape, classes):
    return Net([Flatten(), Linear(784, 32, rng=rng), ReLU(), Linear(32, classes, rng=rng)])


def not_a_net(rng):
    return None
"""


def mlp(rng, sample_shape, classes):
    return Net([Flatten(), Linear(784, 32, rng=rng), ReLU(), Linear(32, classes, rng=rng)])


@pytest.fixture
def mine(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(SOURCE)
    return path


def test_fit_gives_the_launch_commands_weights(mine, mnist_dir, tmp_path):
    ref = f"{mine}:mlp"
    flags = ["--max-steps", "20", "--seed", "2", "--data-dir", str(mnist_dir)]
    cli = run([*LAUNCH, "--workers", "2", ref, *flags, "--save", str(tmp_path / "cli.npz")])
    assert cli.returncode == 0, cli.stderr
    want = {k: a for k, a in load_npz(tmp_path / "cli.npz").items() if k != "meta"}  # the weights
    options = {"max_steps": 20, "seed": 2, "data_dir": str(mnist_dir), "progress": False}
    for workers, model, single in [(2, ref, False), (4, ref, False), (1, ref, True), (2, mlp, True)]:
        net, history = fit(model, workers=workers, single_process=single, **options)
        got = {k: p.data for k, p in net.named_parameters().items()}
        assert got.keys() == want.keys(), (workers, model)
        assert all(got[k].tobytes() == want[k].tobytes() for k in want), (workers, model, single)
        assert [r["step"] for r in history] == [20] and history[0]["test_acc"] > 0.6  # 70.31% at step 20
    net, _ = fit(ref, workers=2, save=str(tmp_path / "api.npz"), **options)
    assert (tmp_path / "api.npz").read_bytes() == (tmp_path / "cli.npz").read_bytes()


def test_a_function_needs_one_process_and_a_failed_job_raises(mine, mnist_dir):
    with pytest.raises(TypeError, match=r"is a function: worker processes .* single_process=True"):
        fit(mlp, workers=2)
    with pytest.raises(TypeError, match=r"such as 'test_launch_api:mlp'"):  # the reference that names it
        fit(mlp, workers=2)
    with pytest.raises(ValueError, match="--shards 4 is not divisible by --workers 3"):
        fit(f"{mine}:mlp", workers=3, data_dir=str(mnist_dir))
    words = rf"server exited with code 1: model {mine}:not_a_net: the function returned NoneType"
    with pytest.raises(RuntimeError, match=rf"the launch job failed \(exit code 1\): {words}"):
        fit(f"{mine}:not_a_net", workers=2, max_steps=3, data_dir=str(mnist_dir), progress=False)
    with pytest.raises(ValueError, match="returned NoneType"):
        fit(f"{mine}:not_a_net", single_process=True, max_steps=3, data_dir=str(mnist_dir), progress=False)
