"""The Python API of data-parallel training: `fit(model, workers=N, **options)` runs a `launch` job
on this machine from a script or a notebook and returns the trained net and one record per epoch.

    from numpy_cnn.launch.api import fit
    net, history = fit("conv-net", workers=4, max_steps=200)

Worker processes build the model themselves, so they need it by reference ("PATH.py:FUNCTION" or
"package.module:FUNCTION"); with single_process=True the job runs in this process, where the model
may be any function. A job across machines is started with the `launch` command on each node.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable

from threadpoolctl import threadpool_limits

from numpy_cnn.api import config_for, show_progress
from numpy_cnn.data import load
from numpy_cnn.distributed.config import JobConfig
from numpy_cnn.distributed.inprocess import in_process_server
from numpy_cnn.model_ref import is_reference
from numpy_cnn.models import build
from numpy_cnn.net import Net

from .progress import Progress
from .supervisor import Job
from .tracefile import clear_parts, collect_trace


def fit(
    model: str | Callable[..., Net],
    *,
    workers: int = 2,
    single_process: bool = False,
    progress: bool | None = None,
    bind: str = "tcp://127.0.0.1:*",
    keys: str | None = None,
    local_transport: str = "ipc",
    **options,
) -> tuple[Net, list[dict]]:
    """Train `model` with a parameter server and `workers` worker processes, as `launch` does with
    the same flags (the same weights, bit for bit, whatever `workers` is); returns the trained net
    and one record per epoch. Raises RuntimeError, saying why, if the job fails.

    `model`: "conv-net", "fc-net", "PATH.py:FUNCTION" or "package.module:FUNCTION"; with
    single_process=True also any function taking a seeded numpy Generator (and, if it likes,
    sample_shape= and classes=) that returns a Net.
    `options`: launch's flags as keywords, e.g. shards=4, max_steps=100, seed=1, save="w.npz",
    checkpoint_dir="ck", on_worker_failure="abort"; `bind`, `keys` and `local_transport` as
    --bind, --keys and --local-transport. `progress`: draw a bar (default: on a terminal or in a
    notebook).
    """
    if callable(model) and not single_process:
        raise TypeError(
            f"model {model!r} is a function: worker processes cannot be handed one, they import the "
            f"model themselves. Pass a reference such as {_reference_hint(model)!r}, or "
            "single_process=True to run the job in this process"
        )
    if local_transport not in ("ipc", "tcp"):
        raise ValueError(f"local_transport must be 'ipc' or 'tcp', got {local_transport!r}")
    config = config_for(model, JobConfig, workers=workers, **options)
    bar = Progress(show_progress() if progress is None else progress)
    if single_process:
        return _in_process(config, bar)
    return _in_processes(config, bar, bind, keys, local_transport == "ipc")


def _in_process(config: JobConfig, bar: Progress) -> tuple[Net, list[dict]]:
    """`launch --single-process`: the server and every worker here, one BLAS thread, the same bits."""
    clear_parts(config)
    try:
        with threadpool_limits(1):
            server = in_process_server(config, events=bar.event, log=bar.write)
            bar.start(server.total_steps)
            history = server.run()
    finally:
        collect_trace(config, say=lambda line: bar.write(f"launch: {line}"))  # with trace=PATH
        bar.close()
    return server.net, history


def _in_processes(
    config: JobConfig, bar: Progress, bind: str, keys: str | None, ipc: bool
) -> tuple[Net, list[dict]]:
    """A launch job on this machine; the net is read back from the weights the server saves."""
    with tempfile.TemporaryDirectory(prefix="numpy-cnn-fit-") as folder:
        saved = config.save or os.path.join(folder, "weights.npz")
        job = Job(dataclasses.replace(config, save=saved), progress=bar, bind=bind, keys_dir=keys, ipc=ipc)
        code = job.run()
        if code == 130:  # Ctrl-C (the job has stopped every process): as any interrupted call
            raise KeyboardInterrupt
        if code != 0:
            raise RuntimeError(f"the launch job failed (exit code {code}): {job.error or 'see above'}")
        data = load(config.dataset, config.data_dir) if is_reference(config.model) else None
        net = build(config.model, seed=config.seed, dtype=config.dtype, data=data)
        net.load(saved)
    return net, job.history


def _reference_hint(function: Callable) -> str:
    """The reference that would name `function`, where its module can be imported by name."""
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if module and module != "__main__" and "<" not in name:
        return f"{module}:{name}"
    return "my_model.py:make_net"
