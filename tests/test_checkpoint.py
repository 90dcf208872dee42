"""Checkpoints: atomic files, damage detection with fallback, and a resume that is bitwise exact."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_cnn import checkpoint
from numpy_cnn.checkpoint import CheckpointError
from numpy_cnn.config import Config
from numpy_cnn.train import main, train


def _write(directory, step, value=1.0):
    params = {"0.weight": np.full((3, 2), value, np.float32)}
    optimizer = {"t": np.array(step), "m.0": np.zeros((3, 2), np.float32)}
    meta = {"config": {"model": "fc-net"}, "step": step, "epoch": 0, "index": step}
    return checkpoint.save(directory, meta, params, optimizer, keep=3)


def test_round_trip_and_only_the_newest_three_are_kept(tmp_path):
    for step in range(1, 6):
        _write(tmp_path, step, value=step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step-00000000{s}.npz" for s in (3, 4, 5)]
    ck = checkpoint.latest(tmp_path)
    assert ck.meta["step"] == 5 and ck.meta["format"] == checkpoint.FORMAT
    np.testing.assert_array_equal(ck.params["0.weight"], np.full((3, 2), 5.0, np.float32))
    assert int(ck.optimizer["t"]) == 5


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage, caplog):
    _write(tmp_path, 1, value=1.0)
    newest = _write(tmp_path, 2, value=2.0)
    data = bytearray(newest.read_bytes())
    if damage == "flip":  # one bit inside the stored parameter values
        i = data.find(np.full((3, 2), 2.0, np.float32).tobytes())
        data[i + 5] ^= 0x10
    elif damage == "truncate":  # a write cut short
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        checkpoint.read(newest)
    ck = checkpoint.latest(tmp_path)
    assert ck.meta["step"] == 1
    assert "skipping checkpoint" in caplog.text


def test_pruning_never_removes_newer_files_or_the_one_just_written(tmp_path):
    for step in (7, 8, 9):
        _write(tmp_path, step)
    _write(tmp_path, 2)  # e.g. a resume from step 1 after skipping damaged newer files
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "step-000000002.npz" in names and "step-000000009.npz" in names


def test_an_interrupted_write_leaves_only_a_temp_file_that_is_never_read(tmp_path):
    _write(tmp_path, 1)
    (tmp_path / ".tmp-abc.npz").write_bytes(b"PK\x03\x04 half a zip")
    assert checkpoint.latest(tmp_path).meta["step"] == 1


def test_no_valid_checkpoint_is_an_error_listing_each_file(tmp_path):
    (tmp_path / "step-000000001.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint\n.*step-000000001.npz"):
        checkpoint.latest(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        checkpoint.latest(tmp_path / "missing")


def test_resume_continues_bit_for_bit(mnist_dir, tmp_path):
    def config(**kw):
        return Config("conv-net", epochs=2, batch_size=100, data_dir=str(mnist_dir), **kw)

    quiet = {"progress": False, "log": lambda s: None}
    full, _ = train(config(max_steps=620), **quiet)
    # stop at 450 with checkpoints every 200 steps and at the end, then resume across the epoch end
    train(config(max_steps=450, checkpoint_dir=str(tmp_path), checkpoint_every=200), **quiet)
    assert checkpoint.latest(tmp_path).meta["step"] == 450
    resumed, history = train(config(max_steps=620, resume=str(tmp_path)), **quiet)
    assert history[-1]["step"] == 620
    for a, b in zip(full.parameters, resumed.parameters):
        assert a.data.tobytes() == b.data.tobytes()


def test_resume_from_another_run_is_refused_with_exit_2(mnist_dir, tmp_path, capsys):
    args = ["fc-net", "--max-steps", "5", "--data-dir", str(mnist_dir), "--checkpoint-dir", str(tmp_path)]
    assert main(args) == 0
    with pytest.raises(SystemExit) as e:
        main(["conv-net", "--resume", str(tmp_path), "--data-dir", str(mnist_dir)])
    assert e.value.code == 2
    assert "model='fc-net'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fc-net", "--checkpoint-every", "5"])
    with pytest.raises(SystemExit) as e:  # a folder of checkpoints is continued, never mixed into
        main(["fc-net", "--checkpoint-dir", str(tmp_path), "--data-dir", str(mnist_dir)])
    assert e.value.code == 2
    assert "already holds checkpoints" in capsys.readouterr().err


WRITER = """
import sys
import numpy as np
from numpy_cnn import checkpoint

folder = sys.argv[1]
try:
    step = checkpoint.latest(folder).meta["step"] + 1
except checkpoint.CheckpointError:
    step = 1
big = np.arange(1 << 20, dtype=np.float32)  # 4 MB: a write takes long enough to be cut
while True:
    meta = {"config": {"model": "fc-net"}, "step": step, "epoch": 0, "index": step}
    checkpoint.save(folder, meta, {"0.weight": big + step}, {"t": np.array(step)}, keep=3)
    print(step, flush=True)
    step += 1
"""


def test_a_writer_killed_at_random_moments_never_leaves_a_bad_newest_checkpoint(tmp_path):
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(0)
    last = 0
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
        assert writer.stdout.readline()  # at least one more checkpoint was written
        time.sleep(rng.uniform(0.0, 0.3))
        writer.kill()  # SIGKILL: wherever it is, mid-write or between writes
        writer.wait(timeout=10)
        writer.stdout.close()
        ck = checkpoint.latest(tmp_path)  # reads and verifies every array's checksum
        step = ck.meta["step"]
        assert step > last
        np.testing.assert_array_equal(ck.params["0.weight"], np.arange(1 << 20, dtype=np.float32) + step)
        last = step
    assert len(list(tmp_path.glob("step-*.npz"))) <= 4  # 3, or 4 if killed between rename and prune
