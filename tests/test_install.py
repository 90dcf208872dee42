"""Installed beside Dask's `distributed` in a fresh virtual environment, both packages import and
a two-worker job runs: this project's folders install as numpy_cnn.distributed and
numpy_cnn.launch, never under the bare names that Dask and ROS 2 use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


@pytest.mark.timeout(900)
def test_installs_next_to_dask_distributed(tmp_path, mnist_dir):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    got = run([python, "-m", "pip", "install", "-q", "distributed"], timeout=600)
    if got.returncode != 0:
        pytest.skip(f"cannot install Dask's distributed from the package index: {got.stderr[-300:]}")
    got = run([python, "-m", "pip", "install", "-q", str(ROOT)], timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    code = (
        "import distributed, numpy_cnn.distributed, numpy_cnn.launch; "
        "from distributed import Client; "  # Dask's, still whole
        "print(distributed.__file__); print(numpy_cnn.distributed.__file__)"
    )
    got = run([python, "-c", code], cwd=tmp_path, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    dask_file, ours = got.stdout.split()
    assert "site-packages/distributed/" in dask_file and "site-packages/numpy_cnn/distributed/" in ours
    env = {**os.environ, "NUMPY_CNN_DATA": str(mnist_dir)}
    launch = str(venv / "bin" / "launch")
    job = [launch, "--workers", "2", "fc-net", "--max-steps", "3", "--save", str(tmp_path / "m.npz")]
    got = run(job, cwd=tmp_path, env=env, timeout=300)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    assert (tmp_path / "m.npz").is_file()
